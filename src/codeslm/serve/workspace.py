"""A served repository root: its index kept fresh, its completion engine, on a shared model.

On start the workspace opens the root's index, or builds one in the background (BM25 first, so
completion has retrieval within seconds; dense embeddings after; the kNN datastore when asked),
completing without retrieval until then. A saved or changed file marks the index dirty; the
indexer thread updates it incrementally and the engine switches to the new generation between
two completions, so the next completion sees the change. A served index lives in the user's
cache directory unless told otherwise, so serving never writes into the repository.
But: it speaks no protocol (see `codeslm.serve.http` and `codeslm.serve.lsp`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from codeslm.complete import (
    CompletionEngine,
    CompletionRequest,
    CompletionResult,
    CompletionSettings,
)
from codeslm.errors import CodeslmError, IndexFormatError
from codeslm.serve.scheduler import CompletionScheduler

log = logging.getLogger("codeslm.serve")

DEBOUNCE_S = 0.05  # changes this close together are indexed as one update


def cache_index_dir(root: Path) -> Path:
    """Where a served workspace keeps the index of `root`: `$XDG_CACHE_HOME/codeslm/indexes/…`."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    return base / "codeslm" / "indexes" / f"{root.resolve().name}-{digest}"


@dataclass
class WorkspaceStatus:
    root: str
    index_dir: str
    state: str  # "indexing" (no index yet), "ready", "error"
    chunks: int = 0
    dense: bool = False
    knn: bool = False
    updating: bool = False  # an update of a usable index is running
    progress: str = ""  # what the indexer is doing now
    error: str | None = None
    updated: float | None = None  # when the engine last switched to a new index (time.time())


@dataclass
class _Progress:
    """Callbacks a front registers to report indexing ($/progress in the LSP)."""

    begin: Callable[[str], None] = lambda message: None
    report: Callable[[str], None] = lambda message: None
    end: Callable[[str], None] = lambda message: None


class Workspace:
    """One repository root being served.

    Example:
        >>> ws = Workspace(Path("~/src/app"), model, tokenizer, CompletionScheduler())
        >>> ws.start()
        >>> ws.complete(CompletionRequest("def f(x):\\n    return ", "\\n", "app/f.py"), "me").text
    """

    def __init__(self, root: Path, model, tokenizer, scheduler: CompletionScheduler, *,
                 index_dir: Path | None = None, settings: CompletionSettings | None = None,
                 dense: bool = True, knn: bool = False, watch: bool = True, threads: int = 1):
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise CodeslmError(f"workspace {self.root} is not a directory")
        self.index_dir = Path(index_dir) if index_dir is not None else cache_index_dir(self.root)
        self.model, self.tokenizer = model, tokenizer
        self.scheduler = scheduler
        self.dense, self.knn, self.watch = dense, knn, watch
        self.threads = threads  # torch threads for completions
        self.engine = CompletionEngine(model, tokenizer, None, settings or CompletionSettings())
        self.status = WorkspaceStatus(str(self.root), str(self.index_dir), "indexing")
        self.progress = _Progress()
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._generation = 0  # index generation the engine uses
        self._rebuild = False  # the index directory holds an unreadable index: build anew

    # Lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._threads.append(threading.Thread(target=self._index_loop, daemon=True,
                                              name=f"codeslm-index-{self.root.name}"))
        if self.watch:
            self._threads.append(threading.Thread(target=self._watch_loop, daemon=True,
                                                  name=f"codeslm-watch-{self.root.name}"))
        for t in self._threads:
            t.start()

    def close(self) -> None:
        self._stop.set()
        self._dirty.set()
        for t in self._threads:
            t.join(timeout=5)

    def contains(self, path: Path) -> bool:
        try:
            Path(path).resolve().relative_to(self.root)
            return True
        except ValueError:
            return False

    def relative(self, path: str | Path) -> str:
        """`path` relative to the root; '' for a path outside it (which is never read)."""
        p = Path(path)
        if not p.is_absolute():
            p = self.root / p
        try:
            return p.resolve().relative_to(self.root).as_posix()
        except ValueError:
            return ""

    def changed(self) -> None:
        """A file was saved or changed on disk: update the index soon."""
        self._dirty.set()

    def wait_ready(self, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.status.state != "indexing":
                return self.status.state == "ready"
            time.sleep(0.02)
        return False

    # Completion ----------------------------------------------------------------------------

    def completion_job(self, request: CompletionRequest, multiline: bool | None = None,
                       max_new_tokens: int | None = None):
        """The work a scheduler runs for `request`: `work(cancelled) -> CompletionResult`."""
        def notes() -> list[str]:
            if self.status.state == "indexing":
                return ["completed without retrieval: the index is still being built"]
            if self.status.state == "error":
                return [f"completed without retrieval: {self.status.error}"]
            return []
        return completion_work(self.engine, request, multiline, max_new_tokens, notes)

    def complete(self, request: CompletionRequest, client: str = "local",
                 multiline: bool | None = None) -> CompletionResult:
        """Complete `request` on the scheduler's model thread and wait for it."""
        job = self.scheduler.submit(client, self.completion_job(request, multiline))
        return job.future.result()

    # Indexing ------------------------------------------------------------------------------

    def _index_loop(self) -> None:
        try:
            self._first_index()
        except CodeslmError as e:
            self._fail(e)
        except Exception as e:  # noqa: BLE001 - a broken indexer must not take the server down
            log.exception("indexing %s failed", self.root)
            self._fail(e)
        while not self._stop.is_set():
            self._dirty.wait()
            if self._stop.is_set():
                return
            time.sleep(DEBOUNCE_S)
            self._dirty.clear()
            try:
                self._update(self.dense, "updating the index")
            except CodeslmError as e:
                log.warning("could not update the index of %s: %s", self.root, e)
            except Exception:  # noqa: BLE001
                log.exception("updating the index of %s failed", self.root)

    def _first_index(self) -> None:
        from codeslm.index.manifest import is_index_dir, read_manifest

        usable = False
        if is_index_dir(self.index_dir):
            try:
                manifest = read_manifest(self.index_dir)
                usable = Path(manifest.repo) == self.root and manifest.dense == self.dense
                if usable:
                    self._switch()  # serve the last index at once, then catch up
            except IndexFormatError as e:
                log.warning("rebuilding the index of %s: %s", self.root, e)
                self._rebuild = True
        if usable or not self.dense:
            self._update(self.dense, "indexing")
        else:
            # BM25 alone takes seconds even for large repositories; embeddings take minutes.
            self._update(False, "indexing (BM25)")
            self._update(True, "embedding chunks")
        if self.knn and not self.status.knn:  # none yet, or the update dropped it
            self._build_knn()
        if self.dense:
            # Load the embedding model now, not on the first save (it takes about a second).
            from codeslm.index.dense import Embedder

            Embedder(self.engine.index.manifest.embedding_model).encode(["warm up"])
            _restore_threads(self.threads)

    def _update(self, dense: bool, what: str) -> None:
        from codeslm.index import build_index

        self.status.updating = True
        self.status.progress = what
        self.progress.begin(what)
        started = time.perf_counter()
        try:
            summary = build_index(self.root, self.index_dir, dense=dense, progress=False,
                                  rebuild=self._rebuild or self.status.state == "error")
            self._rebuild = False
        finally:
            self.status.updating = False
            self.status.progress = ""
            _restore_threads(self.threads)
        # A generation written by another process (`codeslm transfer` adding teacher items) counts.
        changed = not summary.up_to_date or self._generation != _current_generation(self.index_dir)
        if changed:
            self._switch()
        message = (f"{summary.files} files, {summary.chunks} chunks "
                   f"({'up to date' if summary.up_to_date else 'updated'}) in "
                   f"{time.perf_counter() - started:.1f}s")
        log.info("index of %s: %s", self.root, message)
        self.progress.end(message)
        if self.knn and summary.knn_dropped and self.status.state == "ready":
            self._build_knn()

    def _build_knn(self) -> None:
        from codeslm.model.knn import build_index_datastore

        what = "building the kNN datastore"
        self.status.progress = what
        self.progress.begin(what)
        try:
            build_index_datastore(self.index_dir, loaded=(self.model, self.tokenizer), progress=False)
        finally:
            self.status.progress = ""
        self._switch()
        self.progress.end("kNN datastore built")

    def _switch(self) -> None:
        """Open the index's current generation and hand it to the engine between completions."""
        from codeslm.index import Index
        from codeslm.model.knn import KnnDatastore

        def swap() -> None:
            index = Index.open(self.index_dir)
            knn = None
            if KnnDatastore.exists(self.index_dir):
                try:
                    knn = KnnDatastore.load(self.index_dir, self.model)
                except CodeslmError as e:
                    log.warning("not using the kNN datastore of %s: %s", self.index_dir, e)
            old = self.engine.index
            self.engine.use_index(index, knn)
            if old is not None:
                old.close()
            self._generation = index.manifest.generation
            self.status.state, self.status.error = "ready", None
            self.status.chunks, self.status.dense = len(index), index.dense is not None
            self.status.knn = self.engine.knn is not None
            self.status.updated = time.time()

        self.scheduler.run_exclusive(swap).result()

    def _fail(self, error: Exception) -> None:
        """No index could be built: complete without retrieval and say why. (A workspace that
        has one keeps serving it.)"""
        if self._generation == 0:
            self.status.state, self.status.error = "error", str(error)
        log.error("indexing %s failed: %s", self.root, error)
        self.progress.end(f"indexing failed: {error}")

    def _watch_loop(self) -> None:
        from watchfiles import watch

        index_dir = self.index_dir.resolve()

        def wanted(_change, path: str) -> bool:
            p = Path(path)
            return not (p == index_dir or index_dir in p.parents or ".git" in p.parts
                        or "__pycache__" in p.parts)

        try:
            for _changes in watch(self.root, watch_filter=wanted, stop_event=self._stop,
                                  debounce=50, step=20, rust_timeout=500, yield_on_timeout=False):
                self._dirty.set()
        except Exception as e:  # noqa: BLE001 - saving in the editor still refreshes the index
            log.warning("not watching %s for changes: %s", self.root, e)


def completion_work(engine: CompletionEngine, request: CompletionRequest, multiline: bool | None,
                    max_new_tokens: int | None, notes: Callable[[], list[str]] = list):
    """`work(cancelled) -> CompletionResult` for a scheduler: `engine` completes `request`, and
    `notes()`, asked when it is done, adds what the result should say about its context."""
    def work(cancelled) -> CompletionResult:
        result = engine.complete(request, multiline, cancelled=cancelled, max_new_tokens=max_new_tokens)
        result.notes.extend(notes())
        return result
    return work


def _restore_threads(threads: int) -> None:
    """Loading the embedding model sets torch's (process-wide) thread count to every core;
    completions decode one token at a time, fastest on the threads the service was given."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@dataclass
class WorkspaceSet:
    """The workspaces of one server, found by the path of a file."""

    make: Callable[[Path], Workspace]
    items: dict[Path, Workspace] = field(default_factory=dict)

    def add(self, root: Path) -> Workspace:
        root = Path(root).expanduser().resolve()
        if root not in self.items:
            ws = self.make(root)
            ws.start()
            self.items[root] = ws
        return self.items[root]

    def for_path(self, path: Path) -> Workspace | None:
        """The innermost workspace holding `path`."""
        best = None
        for root, ws in self.items.items():
            if ws.contains(path) and (best is None or len(str(root)) > len(str(best.root))):
                best = ws
        return best

    def close(self) -> None:
        for ws in self.items.values():
            ws.close()


def _current_generation(index_dir: Path) -> int:
    from codeslm.index.manifest import read_manifest

    try:
        return read_manifest(index_dir).generation
    except CodeslmError:
        return -1
