-- Commands and highlight groups; nothing starts until require("codeslm").setup() is called.
if vim.g.loaded_codeslm then
  return
end
vim.g.loaded_codeslm = true

local function highlights()
  vim.api.nvim_set_hl(0, "CodeslmSuggestion", { link = "Comment", default = true })
  vim.api.nvim_set_hl(0, "CodeslmSuggestionInfo", { link = "Comment", default = true })
end
highlights()
vim.api.nvim_create_autocmd("ColorScheme", { callback = highlights })

vim.api.nvim_create_user_command("CodeslmStatus", function() require("codeslm").status() end,
  { desc = "codeslm: server, index and last completion" })
vim.api.nvim_create_user_command("CodeslmToggle", function() require("codeslm").toggle() end,
  { desc = "codeslm: completion on or off" })
vim.api.nvim_create_user_command("CodeslmRestart", function() require("codeslm").restart() end,
  { desc = "codeslm: start the servers again" })
