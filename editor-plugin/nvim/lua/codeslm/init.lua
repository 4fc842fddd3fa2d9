--- codeslm for Neovim: starts `codeslm lsp` per workspace root, shows its inline completions as
--- ghost text and maps the keys that accept them.
---
--- Ghost text is drawn by Neovim's own `vim.lsp.inline_completion` on 0.12+ and by the plugin's
--- extmarks (`codeslm.ghost`) on 0.10 and 0.11, or when `ghost_text = "extmark"`. This module
--- owns the configuration, the clients and the keys; it does not draw anything itself.

local M = {}

local defaults = {
  -- The server command; `model` and `args` are appended.
  cmd = { "codeslm", "lsp" },
  -- A model directory (`--model`); nil is the model codeslm ships.
  model = nil,
  -- Extra arguments for `codeslm lsp`, e.g. { "--no-dense" }.
  args = {},
  -- Files or folders that mark a workspace root; a buffer under none of them gets no completion.
  root_markers = { ".git", ".hg", ".jj", "pyproject.toml", "setup.py", "package.json", "Cargo.toml", "go.mod" },
  -- "auto": Neovim's built-in inline completion on 0.12+, the plugin's extmarks before that.
  -- "builtin" or "extmark" force one.
  ghost_text = "auto",
  -- Milliseconds of quiet typing before a request (extmark path; the built-in one waits 200).
  debounce_ms = 50,
  -- Whole blocks while typing, not only the rest of the line (asking by hand always allows blocks).
  multiline = false,
  -- Per filetype: `["*"]` is the default for filetypes not listed.
  filetypes = { ["*"] = true, gitcommit = false, gitrebase = false, help = false, markdown = false },
  -- Insert-mode keys; false leaves one unmapped. A key the user has mapped already is left alone,
  -- and each falls back to its normal meaning when no suggestion is shown.
  keys = {
    accept = "<Tab>",
    accept_line = "<S-Tab>",
    accept_word = "<C-B>",
    dismiss = "<C-]>",
    trigger = "<C-F>",
    next = "<M-]>",
    prev = "<M-[>",
  },
}

M.config = vim.deepcopy(defaults)
M.enabled = true

-- root -> { client_id, exited = {code, signal}?, progress = "...", notes = {...} }
local roots = {}
local warned = {}
local group

local function warn_once(key, msg, level)
  if warned[key] then
    return
  end
  warned[key] = true
  -- scheduled: said from an autocommand, an error message would fail the command that ran it
  vim.schedule(function() vim.notify("codeslm: " .. msg, level or vim.log.levels.WARN) end)
end

--- The ghost-text implementation in use: "builtin" or "extmark".
function M.ghost_kind()
  local want = M.config.ghost_text
  local has_builtin = vim.lsp.inline_completion ~= nil
  if want == "builtin" or (want == "auto" and has_builtin) then
    if has_builtin then
      return "builtin"
    end
    warn_once("nobuiltin", "ghost_text = 'builtin' needs Neovim 0.12+; using extmarks")
  end
  return "extmark"
end

local function ghost()
  if M.ghost_kind() == "builtin" then
    return require("codeslm.builtin")
  end
  return require("codeslm.ghost")
end

function M.filetype_enabled(ft)
  local v = M.config.filetypes[ft]
  if v == nil then
    v = M.config.filetypes["*"]
  end
  return v ~= false
end

function M.root_of(buf)
  if vim.bo[buf].buftype ~= "" or vim.api.nvim_buf_get_name(buf) == "" then
    return nil
  end
  return vim.fs.root(buf, M.config.root_markers)
end

function M.server_cmd()
  local cmd = vim.list_extend({}, M.config.cmd)
  if M.config.model then
    vim.list_extend(cmd, { "--model", M.config.model })
  end
  return vim.list_extend(cmd, M.config.args)
end

--- `client:method(...)` on 0.11+, `client.method(...)` on 0.10, whose client methods take no self.
function M.call(client, method, ...)
  if vim.fn.has("nvim-0.11") == 1 then
    return client[method](client, ...)
  end
  return client[method](...)
end

--- The codeslm client attached to `buf`, if any and still running.
function M.client(buf)
  for _, c in ipairs(vim.lsp.get_clients({ bufnr = buf, name = "codeslm" })) do
    if not M.call(c, "is_stopped") then
      return c
    end
  end
end

local function on_exit(root)
  return function(code, signal, client_id)
    local r = roots[root]
    if not r then
      return
    end
    -- the extmark path asks only running clients; Neovim's built-in one must be told
    local forget = ghost().forget
    if forget and vim.in_fast_event() then
      vim.schedule(function() forget(client_id) end)
    elseif forget then
      forget(client_id)
    end
    r.exited = { code = code, signal = signal }
    r.client_id = nil
    if r.stopping or (code == 0 and signal == 0) then
      return
    end
    vim.schedule(function()
      for _, buf in ipairs(vim.api.nvim_list_bufs()) do
        ghost().clear(buf)
      end
      -- Neovim says itself when a server quits with an error or a signal other than TERM
      if code == 0 and signal == 15 then
        warn_once("exit:" .. root, ("server for %s was terminated; :CodeslmRestart starts it again"):format(root))
      end
    end)
  end
end

local function log_message(root)
  return function(err, result, ctx)
    local r = roots[root]
    if r and result and result.message then
      table.insert(r.notes, result.message)
      if #r.notes > 5 then
        table.remove(r.notes, 1)
      end
    end
    return vim.lsp.handlers["window/logMessage"](err, result, ctx)
  end
end

--- Start (or reuse) the client for `buf`'s workspace; nil when the buffer gets no completion.
function M.attach(buf)
  if not M.enabled or not vim.api.nvim_buf_is_valid(buf) or not M.filetype_enabled(vim.bo[buf].filetype) then
    return nil
  end
  local root = M.root_of(buf)
  if not root then
    return nil
  end
  local r = roots[root]
  if r and r.exited and not r.stopping then
    return nil -- it died: it is restarted by hand, not on every buffer
  end
  local exe = M.config.cmd[1]
  if vim.fn.executable(exe) == 0 then
    warn_once("exe", ("executable '%s' not found; set `cmd` in setup() (see :checkhealth codeslm)"):format(exe),
      vim.log.levels.ERROR)
    return nil
  end
  roots[root] = r or { notes = {} }
  r = roots[root]
  r.exited, r.stopping = nil, nil
  local id = vim.lsp.start({
    name = "codeslm",
    cmd = M.server_cmd(),
    root_dir = root,
    workspace_folders = { { uri = vim.uri_from_fname(root), name = root } },
    init_options = { model = M.config.model, multiline = M.config.multiline },
    on_exit = on_exit(root),
    handlers = { ["window/logMessage"] = log_message(root) },
  }, { bufnr = buf })
  r.client_id = id
  return id
end

local function visible(buf)
  return M.enabled and ghost().visible(buf)
end

local actions = {
  accept = function(buf) return ghost().accept(buf, "all") end,
  accept_line = function(buf) return ghost().accept(buf, "line") end,
  accept_word = function(buf) return ghost().accept(buf, "word") end,
  dismiss = function(buf) return ghost().dismiss(buf) end,
  next = function(buf) return ghost().cycle(buf, 1) end,
  prev = function(buf) return ghost().cycle(buf, -1) end,
}

--- Run `name` ("accept", "accept_line", ...) on the current buffer; false when nothing was shown.
function M.action(name)
  local buf = vim.api.nvim_get_current_buf()
  if name == "trigger" then
    if not M.enabled or not M.client(buf) then
      return false
    end
    ghost().trigger(buf)
    return true
  end
  if not visible(buf) then
    return false
  end
  return actions[name](buf) ~= false
end

-- Neovim's own insert-mode <Tab>/<S-Tab> (snippet jumps) are kept as the fallback; a mapping
-- of the user's is left alone.
local function builtin_mapping(lhs)
  local m = vim.fn.maparg(lhs, "i", false, true)
  if vim.tbl_isempty(m) then
    return nil, true
  end
  if m.desc and m.desc:match("^vim%.snippet%.jump") and m.callback then
    return m, true
  end
  return nil, false
end

local function fallback(lhs, m)
  local keys = lhs
  if m then
    keys = m.callback()
    if m.expr ~= 1 then
      return
    end
  end
  if keys and keys ~= "" then
    vim.api.nvim_feedkeys(vim.keycode(keys), "ni", false)
  end
end

local function map_keys()
  for name, lhs in pairs(M.config.keys) do
    local prev, free = builtin_mapping(lhs or "")
    if lhs and free then
      vim.keymap.set("i", lhs, function()
        if not M.action(name) then
          fallback(lhs, prev)
        end
      end, { desc = "codeslm: " .. name:gsub("_", " ") })
    end
  end
end

--- Turn completion on or off everywhere; the servers keep running so their indexes stay fresh.
function M.toggle()
  M.enabled = not M.enabled
  for _, buf in ipairs(vim.api.nvim_list_bufs()) do
    if vim.api.nvim_buf_is_loaded(buf) then
      local client = M.client(buf)
      if client then
        ghost().set_enabled(buf, client, M.enabled)
      elseif M.enabled then
        M.attach(buf)
      end
    end
  end
  vim.notify("codeslm: completion " .. (M.enabled and "on" or "off"))
end

--- Stop the servers and start them again for the loaded buffers (after one died, or a new model).
function M.restart()
  for root, r in pairs(roots) do
    local c = r.client_id and vim.lsp.get_client_by_id(r.client_id)
    if c then
      r.stopping = true
      M.call(c, "stop", true)
    end
    roots[root] = nil
    warned["exit:" .. root] = nil
  end
  vim.defer_fn(function()
    for _, buf in ipairs(vim.api.nvim_list_bufs()) do
      if vim.api.nvim_buf_is_loaded(buf) then
        M.attach(buf)
      end
    end
  end, 100)
end

--- Lines describing the servers, their indexes and the last completion, for :CodeslmStatus.
function M.status_lines()
  local lines = { ("codeslm: completion %s, ghost text: %s, Neovim %s"):format(
    M.enabled and "on" or "off", M.ghost_kind(), tostring(vim.version())) }
  local cur = vim.api.nvim_get_current_buf()
  if not M.root_of(cur) then
    table.insert(lines, "this buffer is in no workspace (no " .. table.concat(M.config.root_markers, ", ") .. " above it)")
  end
  if next(roots) == nil then
    table.insert(lines, "no server started")
  end
  for root, r in pairs(roots) do
    local c = r.client_id and vim.lsp.get_client_by_id(r.client_id)
    if r.exited then
      table.insert(lines, ("%s: server exited (code %d, signal %d)"):format(root, r.exited.code, r.exited.signal))
    elseif not c then
      table.insert(lines, root .. ": server not running")
    else
      local res = M.call(c, "request_sync", "codeslm/status", vim.empty_dict(), 2000, cur)
      local s = res and res.result
      if not s then
        table.insert(lines, ("%s: server running, status unavailable: %s"):format(
          root, res and res.err and res.err.message or "no answer"))
      else
        table.insert(lines, ("%s: server running, model %s"):format(root, s.model or "?"))
        for _, w in ipairs(s.workspaces or {}) do
          table.insert(lines, ("  index %s: %s, %d chunks%s%s"):format(w.root, w.state, w.chunks or 0,
            w.dense and ", dense" or "", w.error ~= vim.NIL and w.error and (", error: " .. w.error) or ""))
        end
        if s.last_latency_ms ~= nil and s.last_latency_ms ~= vim.NIL then
          table.insert(lines, ("  last completion: %.0f ms"):format(s.last_latency_ms))
        end
        for _, n in ipairs(s.notes or {}) do
          table.insert(lines, "  note: " .. n)
        end
      end
      if r.progress then
        table.insert(lines, "  progress: " .. r.progress)
      end
      for _, n in ipairs(r.notes) do
        table.insert(lines, "  log: " .. n)
      end
    end
  end
  local last = require("codeslm.ghost").last_latency_ms
  if last then
    table.insert(lines, ("last request, as seen by the editor: %.0f ms"):format(last))
  end
  return lines
end

function M.status()
  vim.api.nvim_echo(vim.tbl_map(function(l) return { l .. "\n" } end, M.status_lines()), false, {})
end

local function on_progress(ev)
  local c = vim.lsp.get_client_by_id(ev.data.client_id)
  if not c or c.name ~= "codeslm" then
    return
  end
  local v = ev.data.params.value or {}
  for _, r in pairs(roots) do
    if r.client_id == c.id then
      r.progress = v.kind == "end" and (v.message or "done")
        or ((v.title or r.progress_title or "") .. (v.message and (": " .. v.message) or "")
          .. (v.percentage and (" (" .. v.percentage .. "%)") or ""))
      r.progress_title = v.title or r.progress_title
    end
  end
end

--- `opts` are merged into the defaults above (see :help codeslm-config).
function M.setup(opts)
  M.config = vim.tbl_deep_extend("force", vim.deepcopy(defaults), opts or {})
  if vim.fn.has("nvim-0.10") == 0 then
    vim.notify("codeslm: needs Neovim 0.10 or newer", vim.log.levels.ERROR)
    return
  end
  group = vim.api.nvim_create_augroup("codeslm", { clear = true })
  vim.api.nvim_create_autocmd({ "FileType", "BufReadPost", "BufNewFile" }, {
    group = group,
    callback = function(ev) M.attach(ev.buf) end,
  })
  vim.api.nvim_create_autocmd("LspAttach", {
    group = group,
    callback = function(ev)
      local c = vim.lsp.get_client_by_id(ev.data.client_id)
      if c and c.name == "codeslm" then
        ghost().attach(ev.buf, c, M.enabled)
        vim.b[ev.buf].codeslm_client = c.id
      end
    end,
  })
  vim.api.nvim_create_autocmd("LspProgress", { group = group, callback = on_progress })
  map_keys()
  for _, buf in ipairs(vim.api.nvim_list_bufs()) do
    if vim.api.nvim_buf_is_loaded(buf) then
      M.attach(buf)
    end
  end
end

return M
