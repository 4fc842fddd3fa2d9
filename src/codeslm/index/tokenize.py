"""Tokens for BM25 over code: identifiers split at camelCase and snake_case boundaries.

`parseConfig` gives `parse`, `config` and the whole `parseconfig`, so both a query naming the
identifier and one naming its parts match. Single characters are dropped as noise.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]{2,}")
_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")


def code_tokens(text: str) -> list[str]:
    """Lowercase BM25 tokens of `text`, in order, with repeats."""
    tokens: list[str] = []
    for word in _WORD.findall(text):
        parts = [p.lower() for p in _PART.findall(word) if len(p) > 1]
        tokens.extend(parts)
        whole = word.strip("_").lower()
        if len(parts) > 1 or (whole and not parts and len(whole) > 1):
            tokens.append(whole)
    return tokens
