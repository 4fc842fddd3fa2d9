--- :checkhealth codeslm: the Neovim version and its ghost-text path, the executable, the model
--- and each running server's answer to `codeslm/status`.

local M = {}

function M.check()
  local h = vim.health
  local codeslm = require("codeslm")
  local cfg = codeslm.config

  h.start("Neovim")
  local v = tostring(vim.version())
  if vim.fn.has("nvim-0.10") == 0 then
    h.error("Neovim " .. v .. " is too old: codeslm needs 0.10+")
  elseif codeslm.ghost_kind() == "builtin" then
    h.ok("Neovim " .. v .. ": ghost text through the built-in vim.lsp.inline_completion")
  else
    h.ok("Neovim " .. v .. ": ghost text through the plugin's extmarks")
  end

  h.start("codeslm executable")
  local exe = cfg.cmd[1]
  local path = vim.fn.exepath(exe)
  if path == "" then
    h.error(("'%s' not found on PATH"):format(exe),
      { "pip install codeslm, or set `cmd = { '/path/to/codeslm', 'lsp' }` in setup()" })
    return
  end
  local out = vim.system({ path, "--version" }, { text = true }):wait(10000)
  if out.code == 0 then
    h.ok(path .. ": " .. vim.trim(out.stdout))
  else
    h.error(path .. " --version failed: " .. vim.trim(out.stderr or ""))
  end
  local lsp = vim.system({ path, "lsp", "--help" }, { text = true }):wait(10000)
  if lsp.code ~= 0 then
    h.error(path .. " has no `lsp` command: upgrade codeslm")
  end

  h.start("model")
  if cfg.model then
    if vim.fn.isdirectory(cfg.model) == 1 then
      h.ok("model directory " .. cfg.model)
    else
      h.error("model directory " .. cfg.model .. " does not exist")
    end
  else
    h.ok("the model codeslm ships (set `model` in setup() for another)")
  end

  h.start("servers")
  local clients = vim.lsp.get_clients({ name = "codeslm" })
  if #clients == 0 then
    h.info("none running: open a file under a workspace root (" .. table.concat(cfg.root_markers, ", ") .. ")")
  end
  for _, c in ipairs(clients) do
    local res = codeslm.call(c, "request_sync", "codeslm/status", vim.empty_dict(), 3000)
    local s = res and res.result
    if not s then
      h.error(("%s: no answer to codeslm/status (%s)"):format(c.root_dir or "?",
        res and res.err and res.err.message or "timed out"))
    else
      h.ok(("%s: model %s"):format(c.root_dir or "?", s.model or "?"))
      for _, w in ipairs(s.workspaces or {}) do
        local line = ("index of %s: %s, %d chunks"):format(w.root, w.state, w.chunks or 0)
        if w.state == "error" then
          h.error(line .. ": " .. tostring(w.error))
        elseif w.state == "indexing" then
          h.info(line)
        else
          h.ok(line)
        end
      end
    end
  end
end

return M
