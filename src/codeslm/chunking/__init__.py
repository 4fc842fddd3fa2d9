"""Splitting files into chunks for the index: tree-sitter for code, headings for docs, line
windows for everything else and for code that does not parse.

`chunk_text` is the one entry point; `CHUNKER_VERSION` changes whenever chunk boundaries would.
"""

from __future__ import annotations

from codeslm.chunking.chunk import Chunk
from codeslm.chunking.code import SyntaxErrorInFile, chunk_code
from codeslm.chunking.docs import chunk_doc
from codeslm.chunking.languages import DOC_LANGUAGES, language_for, parser_for
from codeslm.chunking.windows import line_windows

CHUNKER_VERSION = 1
DEFAULT_MAX_CHARS = 1500

__all__ = ["CHUNKER_VERSION", "Chunk", "chunk_text", "chunk_file_text", "language_for"]


def chunk_file_text(path: str, text: str, max_chars: int = DEFAULT_MAX_CHARS) -> tuple[list[Chunk], bool]:
    """Chunks of `text` (the content of `path`) and whether parsing failed (fell back to windows)."""
    language = language_for(path)
    if language in DOC_LANGUAGES:
        return chunk_doc(path, text, language, max_chars), False
    parser = parser_for(language)
    if parser is not None:
        try:
            return chunk_code(path, text, language, parser, max_chars), False
        except SyntaxErrorInFile:
            return line_windows(path, text, language, max_chars), True
    return line_windows(path, text, language, max_chars), False


def chunk_text(path: str, text: str, max_chars: int = DEFAULT_MAX_CHARS) -> list[Chunk]:
    """Chunks of `text`, the content of the file at repository-relative `path`."""
    return chunk_file_text(path, text, max_chars)[0]
