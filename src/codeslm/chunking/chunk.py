"""The `Chunk` record every chunker returns and the index stores."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Chunk:
    """A contiguous run of whole lines of one file.

    Lines are 1-based and inclusive. `kind` is what the lines hold ("function", "method", "class",
    "code", "section", "window", ...); `symbol` names it where a name exists ("Config.load").
    """

    path: str
    language: str
    kind: str
    symbol: str
    start_line: int
    end_line: int
    text: str
