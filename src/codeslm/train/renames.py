"""Consistent renames in Python code: identifiers, string and integer literals, keyword arguments.

`rename_code` parses a piece of Python with tree-sitter (fragments and unbalanced lines are
fine), picks the names and literals that occur in its first lines, and rewrites every
occurrence of each one the same way, so the result is the same code under other names. Reading
rows and the reading probe use it to build an "edited" neighbour of a file's own text.
But: it renames by spelling, not by scope (a name bound twice gets one new name), and it keeps
attribute names, keyword-argument names, imports and builtins, which code outside the piece fixes.
"""

from __future__ import annotations

import builtins
import keyword
import re
from dataclasses import dataclass

import numpy as np

# Word pieces of new names: common in code, so renamed text still reads like code.
WORDS = (
    "item", "value", "node", "entry", "record", "data", "result", "source", "target", "key",
    "name", "index", "count", "total", "buffer", "token", "field", "state", "config", "option",
    "handler", "parent", "child", "left", "right", "first", "last", "current", "other", "extra",
    "base", "local", "remote", "input", "output", "chunk", "block", "part", "group", "batch",
)  # fmt: skip
KEPT = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | frozenset(dir(builtins)) | {
    "self", "cls"}
_IMPORTS = {"import_statement", "import_from_statement", "future_import_statement"}
_SIMPLE_STRING = re.compile(r"[A-Za-z0-9_ .,:/-]{1,40}")


@dataclass(frozen=True)
class Renamed:
    """Code rewritten under new names: `names` and `literals` map old spellings to new ones."""

    text: str
    names: dict[str, str]
    literals: dict[str, str]


def _style(old: str, words: list[str]) -> str:
    """`words` joined in `old`'s case style (snake_case, CamelCase, UPPER_CASE), leading _ kept."""
    lead = old[: len(old) - len(old.lstrip("_"))]
    core = old.lstrip("_")
    if core.isupper() and len(core) > 1:
        return lead + "_".join(w.upper() for w in words)
    if core[:1].isupper():
        return lead + "".join(w.capitalize() for w in words)
    return lead + "_".join(words)


def _occurrences(root, source: bytes):
    """`(kind, start_byte, end_byte)` of every renameable identifier, integer and string body,
    and the spellings that must stay (keyword-argument and imported names)."""
    found, fixed = [], set()
    stack = [root]
    while stack:
        node = stack.pop()
        kind = node.type
        if kind in _IMPORTS:
            fixed.update(source[n.start_byte : n.end_byte].decode() for n in _identifiers(node))
            continue
        if kind == "keyword_argument":
            name = node.child_by_field_name("name")
            if name is not None:
                fixed.add(source[name.start_byte : name.end_byte].decode())
        if kind == "identifier":
            parent = node.parent
            is_attribute = parent is not None and parent.type == "attribute" and (
                parent.child_by_field_name("attribute") == node)
            is_keyword = parent is not None and parent.type == "keyword_argument" and (
                parent.child_by_field_name("name") == node)
            if not (is_attribute or is_keyword):
                found.append(("name", node.start_byte, node.end_byte))
        elif kind == "integer":
            found.append(("int", node.start_byte, node.end_byte))
        elif kind == "string_content":
            found.append(("str", node.start_byte, node.end_byte))
        stack.extend(node.children)
    return found, fixed


def _identifiers(node):
    stack = [node]
    while stack:
        n = stack.pop()
        if n.type == "identifier":
            yield n
        stack.extend(n.children)


def rename_code(text: str, rng: np.random.Generator, visible_lines: int | None = None,
                name_rate: float = 1.0, literal_rate: float = 1.0) -> Renamed:
    """`text` with its names and literals renamed consistently.

    Only spellings that occur in the first `visible_lines` lines (None: all) are candidates, so
    a reader who sees those lines in their original form can map every new name back; each
    candidate name is renamed with probability `name_rate`, each literal with `literal_rate`.
    Dunder names, builtins, keywords, `self`/`cls`, attribute names, keyword-argument names and
    imported names are kept.
    """
    from codeslm.chunking.languages import parser_for

    source = text.encode("utf-8")
    tree = parser_for("python").parse(source)
    found, fixed = _occurrences(tree.root_node, source)
    if visible_lines is None:
        limit = len(source)
    else:
        lines = text.split("\n")
        limit = len("\n".join(lines[:visible_lines]).encode("utf-8"))
    taken = {source[a:b].decode() for kind, a, b in found if kind == "name"} | KEPT | fixed
    names: dict[str, str] = {}
    literals: dict[str, str] = {}
    # Candidates in the order they first appear, so a seed always renames the same way.
    for kind, a, b in sorted(found, key=lambda f: f[1]):
        old = source[a:b].decode()
        if a >= limit:
            continue
        if kind == "name":
            if old in names or old in KEPT or old in fixed or old.startswith("__"):
                continue
            if rng.random() >= name_rate:
                fixed.add(old)
                continue
            for _ in range(20):
                n_words = 1 if len(old) <= 3 else int(rng.integers(1, 3))
                new = _style(old, [WORDS[int(i)] for i in rng.integers(0, len(WORDS), n_words)])
                if new not in taken:
                    break
            else:
                continue
            names[old] = new
            taken.add(new)
        elif old not in literals and rng.random() < literal_rate:
            new = _new_literal(kind, old, rng)
            if new is not None and new != old:
                literals[old] = new
    if not names and not literals:
        return Renamed(text, {}, {})
    pieces, last = [], 0
    for kind, a, b in sorted(found, key=lambda f: f[1]):
        old = source[a:b].decode()
        new = names.get(old) if kind == "name" else literals.get(old)
        if new is None or (kind == "name" and old in fixed):
            continue
        pieces += [source[last:a], new.encode("utf-8")]
        last = b
    pieces.append(source[last:])
    return Renamed(b"".join(pieces).decode("utf-8"), names, literals)


def _new_literal(kind: str, old: str, rng: np.random.Generator) -> str | None:
    if kind == "int":
        if not old.isdigit():
            return None  # hex, octal, underscores: left as written
        value = int(old)
        return str(value + int(rng.integers(1, 10)) if value < 10 else value * 2 + 1)
    if not _SIMPLE_STRING.fullmatch(old):
        return None  # escapes, format fields, long text: left as written
    word = WORDS[int(rng.integers(0, len(WORDS)))]
    return word if old != word else word + "s"
