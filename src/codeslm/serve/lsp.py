"""`codeslm lsp`: the Language Server Protocol front, LSP 3.18 inline completion over stdio (pygls).

`initialize` turns the client's workspace folders into workspaces (settings from
`initializationOptions`: `model`, `multiline`, `knn_lambda`); pygls keeps the open documents in
step with `didOpen`/`didChange` (full or incremental), so the engine completes the unsaved text;
`didSave` and `workspace/didChangeWatchedFiles` re-index. `textDocument/inlineCompletion` runs on
the scheduler: `$/cancelRequest`, or a newer request of the same client, stops it between decode
steps. Indexing is reported with `$/progress`, notes with `window/logMessage`, and the custom
request `codeslm/status` returns the server's state for editor status lines.
But: what to complete is decided by the engine, not here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
import uuid
from pathlib import Path

from lsprotocol import types
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol
from pygls.uris import to_fs_path

from codeslm import __version__
from codeslm.complete import CompletionCancelled, CompletionRequest
from codeslm.serve.service import CompletionService
from codeslm.serve.workspace import Workspace

log = logging.getLogger("codeslm.serve")

STATUS_REQUEST = "codeslm/status"
MAX_ITEMS = 3  # the best completion and the beam search's next ended ones


class _Protocol(LanguageServerProtocol):
    """pygls's protocol, taking a request without `params` (JSON-RPC allows leaving it out, as
    Neovim does for `codeslm/status`) as one whose params are null."""

    def structure_message(self, data):
        if "jsonrpc" in data and "method" in data and "params" not in data:
            data = {**data, "params": None}
        return super().structure_message(data)


class CodeslmLanguageServer(LanguageServer):
    """A pygls server bound to a `CompletionService`."""

    def __init__(self, service: CompletionService):
        super().__init__("codeslm", __version__,
                         text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
                         protocol_cls=_Protocol)
        self.service = service
        self.multiline = service.options.settings.multiline
        self.last_latency_ms: float | None = None
        self.notes: list[str] = []
        self._told: set[str] = set()  # notes already logged to the client, each said once
        self.loop: asyncio.AbstractEventLoop | None = None


def build_server(service: CompletionService) -> CodeslmLanguageServer:
    server = CodeslmLanguageServer(service)

    @server.feature(types.INITIALIZE)
    def initialize(ls: CodeslmLanguageServer, params: types.InitializeParams):
        options = params.initialization_options or {}
        if isinstance(options, dict):
            if options.get("model"):
                ls.service.options.model_dir = Path(options["model"]).expanduser()
            if "multiline" in options:
                ls.multiline = bool(options["multiline"])
            if options.get("knn_lambda") is not None:
                from dataclasses import replace

                ls.service.options.settings = replace(ls.service.options.settings,
                                                      knn_lambda=float(options["knn_lambda"]))
        roots = [to_fs_path(f.uri) for f in params.workspace_folders or []]
        if not roots and params.root_uri:
            roots = [to_fs_path(params.root_uri)]
        elif not roots and params.root_path:
            roots = [params.root_path]
        for root in roots:
            if root and Path(root).is_dir():
                ls.service.add_workspace(root)
        threading.Thread(target=ls.service.load, daemon=True, name="codeslm-load").start()

    @server.feature(types.INITIALIZED)
    async def initialized(ls: CodeslmLanguageServer, _params):
        ls.loop = asyncio.get_running_loop()
        # The model loads in the background; report each workspace's indexing once it exists.
        while not ls.service.loaded.is_set():
            await asyncio.sleep(0.05)
        if ls.service.error:
            ls.window_show_message(types.ShowMessageParams(
                types.MessageType.Error, f"codeslm cannot complete: {ls.service.error}"))
            return
        for ws in list(ls.service.workspaces.items.values()):
            _report_progress(ls, ws)

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(ls: CodeslmLanguageServer, params: types.InlineCompletionParams):
        while not ls.service.loaded.is_set():
            await asyncio.sleep(0.02)
        if ls.service.error:
            return types.InlineCompletionList(items=[])
        document = ls.workspace.get_text_document(params.text_document.uri)
        text = document.source
        offset = min(document.offset_at_position(params.position), len(text))
        path = to_fs_path(params.text_document.uri) or ""
        multiline = ls.multiline or params.context.trigger_kind == types.InlineCompletionTriggerKind.Invoked
        request = CompletionRequest(text[:offset], text[offset:], language=_language(document))
        work = ls.service.completion_job(request, path, multiline)
        started = time.perf_counter()
        try:
            result = await ls.service.scheduler.run(f"lsp/{params.text_document.uri}", work)
        except CompletionCancelled:
            return None
        ls.last_latency_ms = (time.perf_counter() - started) * 1000
        ls.notes = list(result.notes)
        for note in result.notes:
            if note not in ls._told:
                ls._told.add(note)
                ls.window_log_message(types.LogMessageParams(types.MessageType.Info, f"codeslm: {note}"))
        here = types.Range(params.position, params.position)
        texts = [t for t in [result.text, *result.alternatives[: MAX_ITEMS - 1]] if t]
        return types.InlineCompletionList(items=[types.InlineCompletionItem(insert_text=t, range=here)
                                                 for t in texts])

    @server.feature(types.TEXT_DOCUMENT_DID_SAVE, types.SaveOptions(include_text=False))
    def did_save(ls: CodeslmLanguageServer, params: types.DidSaveTextDocumentParams):
        ws = ls.service.workspace_for(to_fs_path(params.text_document.uri))
        if ws is not None:
            ws.changed()

    @server.feature(types.WORKSPACE_DID_CHANGE_WATCHED_FILES)
    def watched_files(ls: CodeslmLanguageServer, params: types.DidChangeWatchedFilesParams):
        for change in params.changes:
            ws = ls.service.workspace_for(to_fs_path(change.uri))
            if ws is not None:
                ws.changed()

    @server.feature(types.WORKSPACE_DID_CHANGE_WORKSPACE_FOLDERS)
    def folders(ls: CodeslmLanguageServer, params: types.DidChangeWorkspaceFoldersParams):
        for folder in params.event.added:
            root = to_fs_path(folder.uri)
            if root and Path(root).is_dir():
                ws = ls.service.add_workspace(root)
                if ws is not None:
                    _report_progress(ls, ws)

    @server.feature(STATUS_REQUEST)
    def status(ls: CodeslmLanguageServer, _params=None):
        return {
            "model": ls.service.model_name or str(ls.service.options.model_dir or "codeslm-default"),
            "loaded": ls.service.loaded.is_set(),
            "error": ls.service.error,
            "workspaces": [
                {"root": ws.status.root, "index_dir": ws.status.index_dir, "state": ws.status.state,
                 "chunks": ws.status.chunks, "dense": ws.status.dense, "knn": ws.status.knn,
                 "updating": ws.status.updating, "progress": ws.status.progress,
                 "error": ws.status.error}
                for ws in ls.service.workspaces.items.values()],
            "last_latency_ms": ls.last_latency_ms,
            "notes": ls.notes,
        }

    @server.feature(types.SHUTDOWN)
    def shutdown(ls: CodeslmLanguageServer, _params=None):
        ls.service.close()

    @server.feature(types.EXIT)
    def exit_(ls: CodeslmLanguageServer, _params=None):
        # Leave at once, as `exit` asks: pygls would first wind down asyncio and its thread pool,
        # which waits on work still running and on its reader, blocked on stdin.
        closing = threading.Thread(target=ls.service.close, daemon=True)
        closing.start()
        closing.join(timeout=10)
        sys.stderr.flush()
        os._exit(0 if getattr(ls.protocol, "_shutdown", True) else 1)

    return server


def _language(document) -> str | None:
    from codeslm.chunking import language_for

    languages = {"python": "python", "javascript": "javascript", "typescript": "typescript",
                 "typescriptreact": "tsx", "go": "go", "rust": "rust", "java": "java", "c": "c",
                 "cpp": "cpp", "markdown": "markdown"}
    return languages.get(document.language_id or "") or (
        language_for(document.path) if document.path else None)


def _report_progress(ls: CodeslmLanguageServer, ws: Workspace) -> None:
    """Show `ws`'s indexing as work-done progress when the client supports it."""
    window = ls.client_capabilities.window if ls.client_capabilities else None
    if not (window and window.work_done_progress) or ls.loop is None:
        return
    loop = ls.loop
    state = {"token": None}
    name = Path(ws.status.root).name

    def begin(message: str) -> None:
        token = f"codeslm-index-{uuid.uuid4().hex[:8]}"
        state["token"] = token

        async def send():
            try:
                await ls.work_done_progress.create_async(token)
            except Exception as e:  # noqa: BLE001 - a client that refuses a token sees no progress
                log.info("no progress token: %s", e)
                return
            ls.work_done_progress.begin(token, types.WorkDoneProgressBegin(
                title=f"codeslm: {name}", message=message, cancellable=False))
        asyncio.run_coroutine_threadsafe(send(), loop)

    def end(message: str) -> None:
        token = state["token"]
        if token is None:
            return
        state["token"] = None

        def send():
            try:
                ls.work_done_progress.end(token, types.WorkDoneProgressEnd(message=message))
            except Exception as e:  # noqa: BLE001
                log.info("progress not ended: %s", e)
        loop.call_soon_threadsafe(lambda: loop.call_later(0.05, send))

    ws.progress.begin, ws.progress.end = begin, end
    if ws.status.progress:
        begin(ws.status.progress)


def run_stdio(service: CompletionService) -> None:
    build_server(service).start_io()
