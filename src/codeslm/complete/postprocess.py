"""Stop rules and clean-up of generated text: where a single-line or block completion ends.

`StopRule` is asked after every new token whether the text so far is finished (end of line, a
dedent back to the cursor's level, a blank line, balanced brackets); `trim_suffix_overlap` drops
what the model wrote that the text after the cursor already has.
But: it does not generate (see `codeslm.complete.decode`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

OPENERS = {"(": ")", "[": "]", "{": "}"}
CLOSERS = {v: k for k, v in OPENERS.items()}
# Languages whose blocks are delimited by indentation rather than braces.
INDENT_LANGUAGES = {"python"}


def indent_of(line: str) -> int:
    """Width of a line's leading whitespace (a tab counts as 4)."""
    width = 0
    for ch in line:
        if ch == " ":
            width += 1
        elif ch == "\t":
            width += 4
        else:
            break
    return width


def _bracket_depths(text: str, comment: str | None):
    """Yield (index, depth after the character) for each bracket outside strings and comments."""
    depth = 0
    quote = None
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if ch == quote or ch == "\n":
                quote = None
        elif ch in "\"'`":
            quote = ch
        elif comment and text.startswith(comment, i):
            end = text.find("\n", i)
            if end < 0:
                return
            i = end
            continue
        elif ch in OPENERS:
            depth += 1
            yield i, depth
        elif ch in CLOSERS:
            depth -= 1
            yield i, depth
        i += 1


@dataclass(frozen=True)
class StopRule:
    """Decides where a completion ends, given the line the cursor is on.

    `cursor_line` is the text of the cursor's line before the cursor. Single-line completions end
    at the end of that line. Blocks end before a blank line, before a line that dedents back to
    the cursor's level (below it when the cursor is inside a block, to it when the cursor's line
    opens one), after a bracket that closes one opened before the cursor, and, in brace
    languages, after the line where the brackets the completion opened are balanced again.
    """

    multiline: bool
    cursor_line: str
    language: str = "text"

    def apply(self, text: str) -> tuple[str, bool]:
        """`(text cut where the completion ends, whether it has ended)`."""
        if not self.multiline:
            end = text.find("\n")
            return (text, False) if end < 0 else (text[:end], True)
        return self._block(text)

    def _block(self, text: str) -> tuple[str, bool]:
        lines = text.split("\n")
        complete_lines = len(lines) - 1  # the last piece may still be growing
        first = self.cursor_line + lines[0]
        # On a line still empty before the cursor, the first line written sets the level.
        base = indent_of(first if not self.cursor_line.strip() else self.cursor_line)
        opens_block = first.rstrip().endswith((":", "{", "(", "[")) if complete_lines else False
        offset = len(lines[0]) + 1
        for n in range(1, complete_lines + 1):
            line = lines[n]
            finished = n < complete_lines
            if not line.strip():
                # A blank line ends a block (an empty line still growing may be indentation).
                if finished:
                    return text[: offset - 1], True
            elif n < complete_lines or len(line) > indent_of(line):
                level = indent_of(line)
                closes_only = line.strip()[0] in CLOSERS
                if level < base or (level == base and opens_block and not closes_only):
                    return text[: offset - 1], True
            offset += len(line) + 1

        cut = self._brackets(text, opens_block)
        if cut is not None:
            return text[:cut], True
        return text, False

    def _brackets(self, text: str, opens_block: bool) -> int | None:
        """Where balanced or overclosed brackets end the completion, or None."""
        opened = False
        comment = "#" if self.language in INDENT_LANGUAGES else "//"
        for i, depth in _bracket_depths(text, comment):
            if depth < 0:
                return i + 1
            if depth > 0:
                opened = True
            elif opened and self.language not in INDENT_LANGUAGES:
                end = text.find("\n", i)
                if end >= 0:
                    return end
        return None


def trim_suffix_overlap(completion: str, suffix: str, multiline: bool) -> str:
    """`completion` without the text it repeats from the start of `suffix`.

    The rest of the cursor's line (`)` after `print(x`) is dropped where the completion ends with
    it; a block that runs into the suffix's next non-blank line is cut before that line.
    """
    if not completion or not suffix:
        return completion
    rest_of_line = suffix.split("\n", 1)[0].rstrip()
    if multiline:
        following = next((ln.strip() for ln in suffix.split("\n")[1:] if ln.strip()), "")
        if following:
            lines = completion.split("\n")
            for n in range(1, len(lines)):
                if lines[n].strip() == following:
                    completion = "\n".join(lines[:n])
                    break
    stripped = completion.rstrip()
    for k in range(min(len(rest_of_line), len(stripped)), 0, -1):
        overlap = rest_of_line[:k]
        if not stripped.endswith(overlap):
            continue
        kept = stripped[: len(stripped) - k]
        if _is_word(overlap[0]) and kept and _is_word(kept[-1]):
            continue  # `value` before `e.strip()` shares an "e", not a token
        if any(c in OPENERS or c in CLOSERS for c in overlap) and abs(_net_depth(kept)) >= abs(
            _net_depth(stripped)
        ):
            continue  # `foo()` before `)` is balanced; only an extra closer is a repeat
        if any(q in overlap and stripped.count(q) % 2 == 0 for q in "\"'"):
            continue  # a string the completion opens and closes itself
        return kept
    return completion


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _net_depth(text: str) -> int:
    return sum(text.count(c) for c in OPENERS) - sum(text.count(c) for c in CLOSERS)


# The last word piece as byte-level BPE pre-tokenizers cut it: letters with one leading space
# (after a non-space) or punctuation, as in " frobn", ".appe", "_va".
_WORD_TAIL = re.compile(r"(?:(?<=\S) |[^A-Za-z0-9\s])?[A-Za-z]{1,32}\Z")


def word_fragment(prefix: str) -> str:
    """The word piece right before the cursor (a candidate for token healing)."""
    m = _WORD_TAIL.search(prefix)
    return m.group() if m else ""
