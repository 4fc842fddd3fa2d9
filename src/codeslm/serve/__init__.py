"""Serving completions to editors: one long-lived service (`service`: the model, a `scheduler`,
the `workspace`s and their fresh indexes) behind protocol fronts that only translate (`http`:
llama.cpp- and OpenAI-compatible routes; `lsp`: LSP inline completion; `commands`: the CLI).

But: what to complete is decided by `codeslm.complete.CompletionEngine`.
"""
