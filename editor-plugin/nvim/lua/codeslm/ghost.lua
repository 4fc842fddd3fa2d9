--- Ghost text drawn with extmarks, for Neovim 0.10 and 0.11 (and 0.12+ with ghost_text = "extmark").
---
--- Sends `textDocument/inlineCompletion` after a quiet spell of typing, cancels the request in
--- flight when the user types on, draws the first line inline and the rest as virtual lines, and
--- keeps a suggestion while the user types its beginning. It does not pick what to suggest: the
--- server does.

local M = {}

M.ns = vim.api.nvim_create_namespace("codeslm")
--- Milliseconds from the last request to its answer, as the editor saw it.
M.last_latency_ms = nil

local INVOKED, AUTOMATIC = 1, 2
local CANCELLED, CONTENT_MODIFIED = -32800, -32801

-- buf -> { client_id, enabled, timer, req_id, items, index, anchor = {row, col}, seen }
local state = {}

local function call(client, method, ...)
  return require("codeslm").call(client, method, ...)
end

local function cursor(buf)
  local win = vim.api.nvim_get_current_win()
  if vim.api.nvim_win_get_buf(win) ~= buf then
    win = vim.fn.bufwinid(buf)
  end
  if win == -1 then
    return nil
  end
  local pos = vim.api.nvim_win_get_cursor(win)
  return pos[1] - 1, pos[2], win
end

--- What is still to insert of the shown suggestion, given what was typed since it was asked for.
local function remaining(buf, s)
  local item = s.items and s.items[s.index]
  if not item then
    return nil
  end
  local row, col = cursor(buf)
  if row ~= s.anchor[1] or col < s.anchor[2] then
    return nil
  end
  local line = vim.api.nvim_buf_get_lines(buf, row, row + 1, false)[1] or ""
  local typed = line:sub(s.anchor[2] + 1, col)
  if item:sub(1, #typed) ~= typed or #item == #typed then
    return nil
  end
  return item:sub(#typed + 1)
end

local function hide(buf)
  if vim.api.nvim_buf_is_valid(buf) then
    vim.api.nvim_buf_clear_namespace(buf, M.ns, 0, -1)
  end
end

local function draw(buf, s)
  hide(buf)
  local rest = remaining(buf, s)
  if not rest then
    s.items = nil
    return false
  end
  local row, col = cursor(buf)
  local lines = vim.split(rest, "\n", { plain = true })
  local virt_text = { { lines[1], "CodeslmSuggestion" } }
  if #s.items > 1 then
    table.insert(virt_text, { (" (%d/%d)"):format(s.index, #s.items), "CodeslmSuggestionInfo" })
  end
  local virt_lines = {}
  for i = 2, #lines do
    virt_lines[#virt_lines + 1] = { { lines[i], "CodeslmSuggestion" } }
  end
  vim.api.nvim_buf_set_extmark(buf, M.ns, row, col, {
    virt_text = virt_text,
    virt_text_pos = "inline",
    virt_lines = #virt_lines > 0 and virt_lines or nil,
    hl_mode = "combine",
  })
  return true
end

local function stop_timer(s)
  if s.timer then
    s.timer:stop()
    s.timer:close()
    s.timer = nil
  end
end

local function live_client(s)
  local client = s.client_id and vim.lsp.get_client_by_id(s.client_id)
  if client and not call(client, "is_stopped") then
    return client
  end
end

local function cancel(s)
  stop_timer(s)
  if s.req_id then
    local client = live_client(s)
    if client then
      call(client, "cancel_request", s.req_id)
    end
    s.req_id = nil
  end
end

local function request(buf, kind)
  local s = state[buf]
  cancel(s)
  local client = live_client(s)
  local row, col, win = cursor(buf)
  if not client or not row or not s.enabled then
    return
  end
  local params = vim.lsp.util.make_position_params(win, client.offset_encoding)
  params.context = { triggerKind = kind }
  local tick = vim.api.nvim_buf_get_changedtick(buf)
  local t0 = vim.uv.hrtime()
  local ok, id
  ok, id = call(client, "request", "textDocument/inlineCompletion", params, function(err, result)
    if s.req_id ~= id then
      return -- superseded or cancelled
    end
    s.req_id = nil
    M.last_latency_ms = (vim.uv.hrtime() - t0) / 1e6
    if err then
      if err.code ~= CANCELLED and err.code ~= CONTENT_MODIFIED and not s.warned then
        s.warned = true
        vim.notify("codeslm: completion failed: " .. tostring(err.message), vim.log.levels.WARN)
      end
      return
    end
    local r, c = cursor(buf)
    if not vim.api.nvim_buf_is_valid(buf) or vim.api.nvim_buf_get_changedtick(buf) ~= tick
      or r ~= row or c ~= col or not vim.api.nvim_get_mode().mode:match("^i") then
      return
    end
    local items = {}
    for _, item in ipairs(result and (result.items or result) or {}) do
      local text = type(item.insertText) == "table" and item.insertText.value or item.insertText
      if type(text) == "string" and text ~= "" then
        items[#items + 1] = text
      end
    end
    s.items, s.index, s.anchor = #items > 0 and items or nil, 1, { row, col }
    draw(buf, s)
  end, buf)
  s.req_id = ok and id or nil
end

local function on_change(buf)
  local s = state[buf]
  if not s or not s.enabled or not vim.api.nvim_get_mode().mode:match("^i") then
    return
  end
  local row, col = cursor(buf)
  local seen = ("%d:%d:%d"):format(vim.api.nvim_buf_get_changedtick(buf), row or -1, col or -1)
  if seen == s.seen then
    return -- TextChangedI and CursorMovedI for the same keystroke
  end
  s.seen = seen
  if s.items and draw(buf, s) then
    return -- typed the start of the suggestion: keep the rest, ask nothing
  end
  hide(buf)
  cancel(s)
  s.items = nil
  s.timer = vim.defer_fn(function()
    s.timer = nil
    request(buf, AUTOMATIC)
  end, require("codeslm").config.debounce_ms)
end

local function leave(buf)
  local s = state[buf]
  if s then
    cancel(s)
    s.items, s.seen = nil, nil
  end
  hide(buf)
end

function M.attach(buf, client, enabled)
  if state[buf] then
    state[buf].client_id, state[buf].enabled = client.id, enabled
    return
  end
  state[buf] = { client_id = client.id, enabled = enabled, index = 1 }
  local group = vim.api.nvim_create_augroup("codeslm.ghost." .. buf, { clear = true })
  vim.api.nvim_create_autocmd({ "TextChangedI", "TextChangedP", "CursorMovedI", "InsertEnter" }, {
    group = group,
    buffer = buf,
    callback = function() on_change(buf) end,
  })
  vim.api.nvim_create_autocmd({ "InsertLeave", "BufLeave" }, {
    group = group,
    buffer = buf,
    callback = function() leave(buf) end,
  })
  vim.api.nvim_create_autocmd({ "BufWipeout" }, {
    group = group,
    buffer = buf,
    callback = function()
      leave(buf)
      state[buf] = nil
      pcall(vim.api.nvim_del_augroup_by_id, group)
    end,
  })
end

function M.set_enabled(buf, _, enabled)
  if state[buf] then
    state[buf].enabled = enabled
  end
  leave(buf)
end

function M.clear(buf)
  leave(buf)
end

function M.visible(buf)
  local s = state[buf]
  return s ~= nil and remaining(buf, s) ~= nil
end

--- The part of `rest` that `part` ("all", "line" or "word") accepts.
function M.take(rest, part)
  if part == "line" then
    return rest:match("^\n?[^\n]*")
  elseif part == "word" then
    return rest:match("^\n?[ \t]*[%w_]+") or rest:match("^\n?[ \t]*[^%w_%s]+") or rest:match("^%s+")
  end
  return rest
end

--- Insert `text` at the cursor of `buf` and put the cursor after it.
function M.insert(buf, text)
  local row, col, win = cursor(buf)
  local lines = vim.split(text, "\n", { plain = true })
  vim.api.nvim_buf_set_text(buf, row, col, row, col, lines)
  vim.api.nvim_win_set_cursor(win, { row + #lines, (#lines == 1 and col or 0) + #lines[#lines] })
end

function M.accept(buf, part)
  local s = state[buf]
  local rest = s and remaining(buf, s)
  if not rest then
    return false
  end
  local text = M.take(rest, part)
  M.insert(buf, text)
  if #text < #rest then
    -- keep what is left of this suggestion, shown from the new cursor
    local row, col = cursor(buf)
    s.items, s.index, s.anchor = { rest:sub(#text + 1) }, 1, { row, col }
    s.seen = ("%d:%d:%d"):format(vim.api.nvim_buf_get_changedtick(buf), row, col)
    draw(buf, s)
  else
    s.items = nil
    hide(buf)
  end
  return true
end

function M.dismiss(buf)
  leave(buf)
  local s = state[buf]
  if s then
    local row, col = cursor(buf)
    s.seen = ("%d:%d:%d"):format(vim.api.nvim_buf_get_changedtick(buf), row, col)
  end
end

function M.cycle(buf, step)
  local s = state[buf]
  if not s or not s.items or #s.items < 2 then
    return false
  end
  s.index = (s.index - 1 + step) % #s.items + 1
  draw(buf, s)
end

function M.trigger(buf)
  if state[buf] then
    request(buf, INVOKED)
  end
end

return M
