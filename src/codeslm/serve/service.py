"""What every protocol front serves from: the model loaded once, one scheduler, the workspaces.

`CompletionService.load` reads the model (the shipped one by default) and may run in the
background while a front already answers `/health` with 503. Fronts find the workspace of a file
with `workspace_for`, submit `Workspace.completion_job`s to `scheduler`, and translate results.
But: nothing here speaks HTTP or LSP.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from codeslm.complete import CompletionEngine, CompletionRequest, CompletionSettings
from codeslm.errors import CodeslmError
from codeslm.serve.scheduler import CompletionScheduler
from codeslm.serve.workspace import Workspace, WorkspaceSet, completion_work

log = logging.getLogger("codeslm.serve")


@dataclass
class ServiceOptions:
    model_dir: Path | None = None  # None: the shipped model
    index_dir: Path | None = None  # for the first workspace; the others use the cache directory
    dense: bool = True
    knn: bool = False
    watch: bool = True
    settings: CompletionSettings = field(default_factory=CompletionSettings)
    threads: int = 1  # torch threads: one token at a time is fastest on one thread


class CompletionService:
    """The long-lived state behind `codeslm serve` and `codeslm lsp`."""

    def __init__(self, options: ServiceOptions | None = None):
        self.options = options or ServiceOptions()
        self.scheduler = CompletionScheduler()
        self.model = self.tokenizer = None
        self.model_name = ""
        self.error: str | None = None
        self.loaded = threading.Event()
        self.workspaces = WorkspaceSet(self._make_workspace)
        self._pending: list[Path] = []
        self._bare: CompletionEngine | None = None  # for files in no workspace
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self.loaded.is_set() and self.error is None

    def load(self) -> None:
        """Load the model, then start the workspaces added so far. Errors are kept in `error`."""
        import torch

        from codeslm.complete.engine import require_fim
        from codeslm.model.loading import default_model_dir, load_model

        try:
            torch.set_num_threads(self.options.threads)
            model_dir = Path(self.options.model_dir or default_model_dir())
            self.model, self.tokenizer = load_model(model_dir, device="cpu")
            require_fim(self.tokenizer)
            self.model_name = model_dir.name if self.options.model_dir else "codeslm-default"
        except CodeslmError as e:
            self.error = str(e)
            log.error("cannot serve: %s", e)
        # Workspaces asked for while loading start now; `loaded` is set once they all exist.
        while True:
            with self._lock:
                pending, self._pending = self._pending, []
                if not pending:
                    self.loaded.set()
                    return
            if self.error is None:
                for root in pending:
                    self.workspaces.add(root)

    def add_workspace(self, root: str | Path) -> Workspace | None:
        """Serve `root` (started now, or once the model is loaded: then None is returned)."""
        root = Path(root).expanduser().resolve()
        if not root.is_dir():
            raise CodeslmError(f"workspace {root} is not a directory")
        with self._lock:
            if not self.loaded.is_set():
                if root not in self._pending:
                    self._pending.append(root)
                return None
        if self.error is not None:
            return None
        return self.workspaces.add(root)

    def workspace_for(self, path: str | Path | None) -> Workspace | None:
        """The workspace holding `path`; with no path (or a relative one), the first workspace."""
        if path:
            p = Path(path)
            if p.is_absolute():
                return self.workspaces.for_path(p)
        return next(iter(self.workspaces.items.values()), None)

    def completion_job(self, request: CompletionRequest, file: str | Path | None = None,
                       multiline: bool | None = None, max_new_tokens: int | None = None):
        """The scheduler work for `request` in `file`: its workspace's engine, or, for a file in
        no workspace, an engine without retrieval. `request.path` is set relative to the root."""
        ws = self.workspace_for(file)
        if ws is None:
            if self._bare is None:
                self._bare = CompletionEngine(self.model, self.tokenizer, None, self.options.settings)
            request.path = Path(file).name if file else request.path
            return completion_work(self._bare, request, multiline, max_new_tokens,
                                   lambda: ["completed without retrieval: the file is in no workspace"])
        if file:
            request.path = ws.relative(file)
        return ws.completion_job(request, multiline, max_new_tokens)

    def _make_workspace(self, root: Path) -> Workspace:
        first = not self.workspaces.items
        opts = self.options
        return Workspace(root, self.model, self.tokenizer, self.scheduler,
                         index_dir=opts.index_dir if first else None, settings=opts.settings,
                         dense=opts.dense, knn=opts.knn, watch=opts.watch, threads=opts.threads)

    def close(self) -> None:
        self.workspaces.close()
        self.scheduler.close()
