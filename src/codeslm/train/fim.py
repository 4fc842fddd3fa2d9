"""Fill-in-the-middle transforms on token ids: prefix-suffix-middle and suffix-prefix-middle.

Split points are drawn between tokens, on the ids already in the memory-mapped shards: no text is
decoded and re-encoded, every token comes back in place, and the byte-level pre-tokenizer splits
at spaces and punctuation, so a cursor between tokens is the usual case at run time.
PSM: `<fim_prefix> P <fim_suffix> S <fim_middle> M`; SPM (the StarCoder variant, whose middle
continues the prefix): `<fim_prefix> <fim_suffix> S <fim_middle> P M`.
Line cuts (`line_fim_split`) end the middle at a line end, as an editor's cursor sees it: the rest
of a line, or from a line start one line or a few; uniform cuts cover everything else.
But: it does not decide which windows get transformed (see `codeslm.train.stream`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FimIds:
    prefix: int
    suffix: int
    middle: int
    # Tokens whose text ends a line (needed only by line cuts).
    newlines: frozenset[int] = frozenset()

    @classmethod
    def from_tokenizer(cls, tokenizer) -> FimIds:
        from codeslm.model.prompt import fim_template

        ids = fim_template(tokenizer).ids(tokenizer)
        vocab = tokenizer.get_vocab()
        newlines = frozenset(
            i for t, i in vocab.items() if tokenizer.convert_tokens_to_string([t]).endswith("\n")
        )
        return cls(
            prefix=ids["prefix"], suffix=ids["suffix"], middle=ids["middle"], newlines=newlines
        )


def fim_split(n: int, rng: np.random.Generator) -> tuple[int, int]:
    """Two cut points 0 <= a <= b <= n, uniform over token boundaries."""
    a, b = sorted(rng.integers(0, n + 1, size=2).tolist())
    return a, b


def line_fim_split(
    tokens: np.ndarray, newlines: frozenset[int], rng: np.random.Generator, more_lines: float = 0.25
) -> tuple[int, int]:
    """Cut points whose middle runs to a line end: from a line start half the time, else from
    anywhere in a line; each further line is taken with probability `more_lines`.

    Without a line end in reach the middle runs to the end of `tokens`.
    """
    n = len(tokens)
    if n == 0:
        return 0, 0
    ends = np.flatnonzero(np.isin(tokens, list(newlines))) + 1  # a line ends after these
    if rng.random() < 0.5:
        starts = np.concatenate([[0], ends[ends < n]])
        a = int(starts[rng.integers(0, len(starts))])
    else:
        a = int(rng.integers(0, n))
    after = ends[ends > a]
    if len(after) == 0:
        return a, n
    k = 0
    while k + 1 < len(after) and rng.random() < more_lines:
        k += 1
    return a, int(after[k])


def to_fim(
    tokens: np.ndarray,
    ids: FimIds,
    rng: np.random.Generator,
    spm: bool,
    by_line: bool = False,
) -> np.ndarray:
    """`tokens` (no end of text) rearranged for infilling, 3 sentinel tokens longer; `by_line`
    cuts with `line_fim_split`, else uniformly."""
    a, b = line_fim_split(tokens, ids.newlines, rng) if by_line else fim_split(len(tokens), rng)
    prefix, middle, suffix = tokens[:a], tokens[a:b], tokens[b:]
    dtype = tokens.dtype
    p, s, m = (np.array([t], dtype=dtype) for t in (ids.prefix, ids.suffix, ids.middle))
    if spm:
        return np.concatenate([p, s, suffix, m, prefix, middle])
    return np.concatenate([p, prefix, s, suffix, m, middle])
