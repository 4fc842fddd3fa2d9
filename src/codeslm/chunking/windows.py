"""Line-window chunking: the fallback for text without a grammar and for unparseable code.

Windows hold whole lines up to a character and line budget and overlap by a few lines, so a
match near a window's edge still lands in one window whole.
"""

from __future__ import annotations

from codeslm.chunking.chunk import Chunk

MAX_WINDOW_LINES = 60


def line_windows(
    path: str, text: str, language: str, max_chars: int, overlap: int = 5, kind: str = "window",
    symbol: str = "",
) -> list[Chunk]:
    """Split `text` into windows of whole lines, each at most `max_chars` (or one long line)."""
    lines = text.splitlines(keepends=True)
    chunks: list[Chunk] = []
    start = 0
    while start < len(lines):
        end, size = start, len(lines[start])
        while (
            end + 1 < len(lines)
            and size + len(lines[end + 1]) <= max_chars
            and end + 1 - start < MAX_WINDOW_LINES
        ):
            end += 1
            size += len(lines[end])
        chunks.append(
            Chunk(path, language, kind, symbol, start + 1, end + 1, "".join(lines[start : end + 1]))
        )
        if end + 1 >= len(lines):
            break
        start = max(end + 1 - overlap, start + 1) if end - start + 1 > 2 * overlap else end + 1
    return chunks
