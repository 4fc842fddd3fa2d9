"""Syntax-aware chunking of source code with tree-sitter.

Whole functions, methods and classes become one chunk when they fit the budget; larger ones are
split at their children's boundaries, keeping their name; small neighbours that are not
definitions (imports, constants) are merged. Comments and blank lines go with what follows them.
Chunks tile the file: every line belongs to exactly one chunk.
But: a file with syntax errors is not chunked here; the caller falls back to line windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import tree_sitter

from codeslm.chunking.chunk import Chunk
from codeslm.chunking.languages import CLASS_LIKE, DEFINITIONS, FUNCTION_VALUES, WRAPPERS
from codeslm.chunking.windows import line_windows


class SyntaxErrorInFile(ValueError):
    """tree-sitter found syntax errors, so the file's structure cannot be trusted."""


@dataclass
class _Atom:
    start: int  # 0-based first row
    end: int  # 0-based last row, inclusive
    kind: str
    symbol: str
    whole_definition: bool


class _Lines:
    """Character counts of line ranges, for budgeting."""

    def __init__(self, lines: list[str]):
        self.lines = lines
        self.offsets = [0]
        for line in lines:
            self.offsets.append(self.offsets[-1] + len(line))

    def size(self, start: int, end: int) -> int:
        return self.offsets[end + 1] - self.offsets[start]


def chunk_code(
    path: str, text: str, language: str, parser: tree_sitter.Parser, max_chars: int
) -> list[Chunk]:
    """Chunk `text` (the source of `path`) with `parser`; raises SyntaxErrorInFile on parse errors."""
    tree = parser.parse(text.encode("utf-8"))
    if tree.root_node.has_error:
        raise SyntaxErrorInFile(path)
    lines = _Lines(text.splitlines(keepends=True))
    if not lines.lines:
        return []
    definitions = DEFINITIONS.get(language, {})
    atoms: list[_Atom] = []
    _collect(tree.root_node, "code", "", definitions, lines, max_chars, atoms)
    atoms = _tile(atoms, len(lines.lines))
    chunks: list[Chunk] = []
    for group in _merge(atoms, lines, max_chars):
        chunks.extend(_emit(path, language, group, lines, max_chars))
    return chunks


def _collect(node, kind, symbol, definitions, lines, max_chars, out) -> None:
    for child in node.children:
        if child.type == "comment" or child.start_point.row > child.end_point.row:
            continue
        start, end = child.start_point.row, _last_row(child)
        child_kind = _definition_kind(child, definitions)
        if child_kind is not None:
            if child_kind == "function" and kind in CLASS_LIKE:
                child_kind = "method"
            name = _name(child)
            child_symbol = f"{symbol}.{name}" if symbol and name else (name or symbol)
            if lines.size(start, end) <= max_chars:
                out.append(_Atom(start, end, child_kind, child_symbol, True))
            else:
                _collect(child, child_kind, child_symbol, definitions, lines, max_chars, out)
        elif lines.size(start, end) <= max_chars or child.child_count == 0:
            out.append(_Atom(start, end, kind, symbol, False))
        else:
            _collect(child, kind, symbol, definitions, lines, max_chars, out)


def _last_row(node) -> int:
    # A node ending at column 0 ends with the newline of the row before.
    row = node.end_point.row
    return row - 1 if node.end_point.column == 0 and row > node.start_point.row else row


def _definition_kind(node, definitions: dict[str, str]) -> str | None:
    kind = definitions.get(node.type)
    if kind is None or node.type not in WRAPPERS:
        return kind
    inner = _wrapped(node)
    if inner is None:
        return None
    return definitions.get(inner.type, kind if inner.type in FUNCTION_VALUES else None) or kind


def _wrapped(node):
    """The definition a wrapper node stands for, or None when it wraps no definition."""
    if node.type in ("lexical_declaration", "variable_declaration"):
        for declarator in node.named_children:
            value = declarator.child_by_field_name("value")
            if value is not None and value.type in FUNCTION_VALUES:
                return value
        return None
    inner = node.child_by_field_name("definition") or node.child_by_field_name("declaration")
    if inner is None:
        named = [c for c in node.named_children if c.type not in ("decorator", "comment")]
        inner = named[-1] if named else None
    return inner


def _name(node) -> str:
    if node.type in ("lexical_declaration", "variable_declaration"):
        for declarator in node.named_children:
            name = declarator.child_by_field_name("name")
            if name is not None:
                return name.text.decode("utf-8", "replace")
        return ""
    if node.type in WRAPPERS:
        inner = _wrapped(node)
        return _name(inner) if inner is not None else ""
    for field in ("name", "declarator", "type"):
        child = node.child_by_field_name(field)
        if child is not None:
            return _identifier(child)
    if node.type == "type_declaration":
        for spec in node.named_children:
            name = spec.child_by_field_name("name")
            if name is not None:
                return name.text.decode("utf-8", "replace")
    return ""


def _identifier(node) -> str:
    """The identifier inside a (possibly nested) declarator: `*parse(int x)` -> parse."""
    while node is not None:
        if node.type.endswith("identifier") or node.type in ("type_identifier", "name"):
            return node.text.decode("utf-8", "replace")
        node = node.child_by_field_name("declarator") or next(iter(node.named_children), None)
    return ""


def _tile(atoms: list[_Atom], n_lines: int) -> list[_Atom]:
    """Make atoms cover every line once: overlaps merge, gaps join the atom after them."""
    atoms.sort(key=lambda a: (a.start, -a.end))
    tiled: list[_Atom] = []
    for atom in atoms:
        if tiled and atom.start <= tiled[-1].end:
            prev = tiled[-1]
            prev.end = max(prev.end, atom.end)
            continue
        atom.start = tiled[-1].end + 1 if tiled else 0
        tiled.append(atom)
    if tiled:
        tiled[-1].end = n_lines - 1
    else:
        tiled.append(_Atom(0, n_lines - 1, "code", "", False))
    return tiled


def _merge(atoms: list[_Atom], lines: _Lines, max_chars: int) -> list[_Atom]:
    """Merge neighbouring pieces of the same definition (or of top-level code) within the budget."""
    merged: list[_Atom] = []
    for atom in atoms:
        prev = merged[-1] if merged else None
        if (
            prev is not None
            and not prev.whole_definition
            and not atom.whole_definition
            and (prev.kind, prev.symbol) == (atom.kind, atom.symbol)
            and lines.size(prev.start, atom.end) <= max_chars
        ):
            prev.end = atom.end
        else:
            merged.append(atom)
    return merged


def _emit(path, language, atom: _Atom, lines: _Lines, max_chars: int) -> list[Chunk]:
    if lines.size(atom.start, atom.end) <= max_chars:
        text = "".join(lines.lines[atom.start : atom.end + 1])
        return [Chunk(path, language, atom.kind, atom.symbol, atom.start + 1, atom.end + 1, text)]
    # A single statement or literal over the budget: cut it into windows that keep its name.
    pieces = line_windows(
        path, "".join(lines.lines[atom.start : atom.end + 1]), language, max_chars, overlap=0
    )
    return [
        Chunk(path, language, atom.kind, atom.symbol, p.start_line + atom.start,
              p.end_line + atom.start, p.text)
        for p in pieces
    ]
