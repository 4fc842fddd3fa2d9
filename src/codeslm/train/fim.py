"""Fill-in-the-middle transforms on token ids: prefix-suffix-middle and suffix-prefix-middle.

Split points are drawn between tokens, on the ids already in the memory-mapped shards: no text is
decoded and re-encoded, every token comes back in place, and the byte-level pre-tokenizer splits
at spaces and punctuation, so a cursor between tokens is the usual case at run time.
PSM: `<fim_prefix> P <fim_suffix> S <fim_middle> M`; SPM (the StarCoder variant, whose middle
continues the prefix): `<fim_prefix> <fim_suffix> S <fim_middle> P M`.
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

    @classmethod
    def from_tokenizer(cls, tokenizer) -> FimIds:
        from codeslm.model.prompt import fim_template

        ids = fim_template(tokenizer).ids(tokenizer)
        return cls(prefix=ids["prefix"], suffix=ids["suffix"], middle=ids["middle"])


def fim_split(n: int, rng: np.random.Generator) -> tuple[int, int]:
    """Two cut points 0 <= a <= b <= n, uniform over token boundaries."""
    a, b = sorted(rng.integers(0, n + 1, size=2).tolist())
    return a, b


def to_fim(tokens: np.ndarray, ids: FimIds, rng: np.random.Generator, spm: bool) -> np.ndarray:
    """`tokens` (no end of text) rearranged for infilling, 3 sentinel tokens longer."""
    a, b = fim_split(len(tokens), rng)
    prefix, middle, suffix = tokens[:a], tokens[a:b], tokens[b:]
    dtype = tokens.dtype
    p, s, m = (np.array([t], dtype=dtype) for t in (ids.prefix, ids.suffix, ids.middle))
    if spm:
        return np.concatenate([p, s, suffix, m, prefix, middle])
    return np.concatenate([p, prefix, s, suffix, m, middle])
