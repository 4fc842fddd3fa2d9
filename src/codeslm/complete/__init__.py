"""Retrieval-augmented code completion at a cursor (see `engine` for the pipeline).

But: indexes come from `codeslm.index`, models from `codeslm.model`.
"""

from codeslm.complete.decode import CompletionCancelled
from codeslm.complete.engine import (
    CompletionEngine,
    CompletionRequest,
    CompletionResult,
    CompletionSettings,
    split_at_cursor,
)

__all__ = ["CompletionCancelled", "CompletionEngine", "CompletionRequest", "CompletionResult",
           "CompletionSettings", "split_at_cursor"]
