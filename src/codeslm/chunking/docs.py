"""Chunking of documentation by headings: Markdown (`#` headings outside code fences) and
reStructuredText (underlined, optionally overlined titles).

A section runs from its heading to the next; tiny sections join the next one, and sections over
the budget are cut into line windows that keep the heading as their symbol.
"""

from __future__ import annotations

import re

from codeslm.chunking.chunk import Chunk
from codeslm.chunking.windows import line_windows

_MD_HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_MD_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_RST_ADORNMENT = re.compile(r"^([=\-~^\"'`#*+:.])\1{2,}\s*$")
MIN_SECTION_CHARS = 200


def chunk_doc(path: str, text: str, language: str, max_chars: int) -> list[Chunk]:
    """Chunk a Markdown or reStructuredText document by its headings."""
    lines = text.splitlines(keepends=True)
    if not lines:
        return []
    headings = _markdown_headings(lines) if language == "markdown" else _rst_headings(lines)
    starts = [0] + [row for row, _ in headings if row > 0]
    titles = {row: title for row, title in headings}
    sections = []
    for i, start in enumerate(starts):
        end = (starts[i + 1] if i + 1 < len(starts) else len(lines)) - 1
        sections.append([start, end, titles.get(start, "")])
    merged: list[list] = []
    for section in sections:
        prev = merged[-1] if merged else None
        if prev is not None and _size(lines, prev[0], prev[1]) < MIN_SECTION_CHARS and (
            _size(lines, prev[0], section[1]) <= max_chars
        ):
            prev[1] = section[1]
            prev[2] = prev[2] or section[2]
        else:
            merged.append(section)
    chunks: list[Chunk] = []
    for start, end, title in merged:
        body = "".join(lines[start : end + 1])
        if len(body) <= max_chars:
            chunks.append(Chunk(path, language, "section", title, start + 1, end + 1, body))
            continue
        for piece in line_windows(path, body, language, max_chars, kind="section", symbol=title):
            chunks.append(
                Chunk(path, language, "section", title, piece.start_line + start,
                      piece.end_line + start, piece.text)
            )
    return chunks


def _size(lines: list[str], start: int, end: int) -> int:
    return sum(len(line) for line in lines[start : end + 1])


def _markdown_headings(lines: list[str]) -> list[tuple[int, str]]:
    headings, in_fence = [], False
    for row, line in enumerate(lines):
        if _MD_FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and (m := _MD_HEADING.match(line)):
            headings.append((row, m.group(1)))
    return headings


def _rst_headings(lines: list[str]) -> list[tuple[int, str]]:
    headings = []
    for row in range(len(lines) - 1):
        title, under = lines[row].strip(), lines[row + 1].rstrip()
        if title and not _RST_ADORNMENT.match(title) and _RST_ADORNMENT.match(under) and (
            len(under) >= len(title)
        ):
            overlined = row > 0 and _RST_ADORNMENT.match(lines[row - 1].rstrip())
            headings.append((row - 1 if overlined else row, title))
    return headings
