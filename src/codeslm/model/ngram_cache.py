"""Token n-gram cache: what followed earlier occurrences of the text just written, mixed into the
model's next-token distribution so a small model copies what its file and retrieved chunks hold.

The cache holds token segments: the text after the cursor, retrieved chunks, and last the text
before the cursor, which grows with every generated token. At each step it finds the longest
`n <= MAX_N` such that the last `n` tokens of that history occur earlier in some segment, and
`p_cache` is the share of each token that followed those occurrences. The model then predicts
`λ_n·p_cache + (1-λ_n)·p_LM`, trusting the cache more the longer the match. It sees whole files,
not just the window the model's positions allow. This is a continuous cache (Grave et al., 2017,
arXiv:1612.04426) keyed by exact n-grams instead of hidden states.

`LAMBDAS` were fitted by maximum likelihood on 200 held-out lines of `click` (a package of the
corpus's validation split, not one of the proof projects) with the shipped model:
`python eval/retrieval_use.py --fit-cache --tasks 200 SITE_PACKAGES/click`. A model that reads its
context better needs other weights: a model directory whose `config.json` holds
`ngram_cache_lambdas` (written by `--fit-cache --write`) has the engine use those
(`model_lambdas`). The engine's `ngram_cache` setting turns the cache off.
But: it does not decode (see `codeslm.complete.decode`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch

MAX_N = 12
# λ_n for a longest match of n tokens (index n; no match: no mixing).
LAMBDAS = (0.0, 0.19, 0.28, 0.33, 0.39, 0.44, 0.49, 0.50, 0.61, 0.48, 0.47, 0.72, 0.79)
_GAP = -1  # between segments, so no match spans two of them
CONFIG_KEY = "ngram_cache_lambdas"  # in a model's config.json: weights fitted for that model


def check_lambdas(lambdas: Sequence[float]) -> tuple[float, ...]:
    """`lambdas` as a tuple, or ValueError saying why they cannot be cache weights."""
    try:
        values = tuple(float(lam) for lam in lambdas)
    except (TypeError, ValueError) as e:
        raise ValueError(f"n-gram cache weights must be a list of numbers (got {lambdas!r})") from e
    if len(values) < 2 or any(not 0 <= lam < 1 for lam in values):
        raise ValueError("n-gram cache weights must be weights in [0, 1), one per match length "
                         f"from 0 (got {list(values)})")
    return values


def model_lambdas(config) -> tuple[float, ...]:
    """The cache weights fitted for the model whose HF `config` this is, else `LAMBDAS`."""
    fitted = getattr(config, CONFIG_KEY, None)
    if fitted is None:
        return LAMBDAS
    try:
        return check_lambdas(fitted)
    except ValueError as e:
        raise ValueError(f"{CONFIG_KEY} in the model's config.json: {e}") from e


class NgramCache:
    """Segments of token ids (`memory`) plus a growing `history` the next token continues."""

    def __init__(self, memory: Iterable[Sequence[int]], history: Sequence[int],
                 lambdas: Sequence[float] = LAMBDAS, skip_ids: Iterable[int] = ()):
        lambdas = check_lambdas(lambdas)
        gap = np.array([_GAP], dtype=np.int64)
        parts = [piece for segment in memory if len(segment)
                 for piece in (np.asarray(segment, dtype=np.int64), gap)]
        parts.append(np.asarray(history, dtype=np.int64).reshape(-1))
        ids = np.concatenate(parts)
        self._ids = np.empty(max(len(ids) * 2, 256), dtype=np.int64)
        self._ids[: len(ids)] = ids
        self._len = len(ids)
        self.lambdas = lambdas
        self.skip = np.array(sorted(set(skip_ids) | {_GAP}), dtype=np.int64)

    @classmethod
    def for_text(cls, tokenizer, before: str, after: str = "",
                 chunks: Iterable[str] = (), max_chars: int = 65_536,
                 lambdas: Sequence[float] = LAMBDAS) -> NgramCache:
        """A cache over the text `before` the cursor (the history), `after` it and `chunks`.

        At most `max_chars` of each side nearest the cursor are read, so a huge file costs a
        bounded time per request. Special tokens never come from the cache.
        """
        texts = [after[:max_chars], *chunks, before[-max_chars:]]
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        return cls(ids[:-1], ids[-1], lambdas, skip_ids=tokenizer.all_special_ids)

    def fork(self) -> NgramCache:
        """An independent copy, for a second continuation of the same history."""
        twin = copy.copy(self)
        twin._ids = self._ids[: self._len + 64].copy()  # room for a few tokens; `append` grows it
        return twin

    def append(self, token: int) -> None:
        """Extend the history by one (generated) token."""
        if self._len == len(self._ids):
            self._ids = np.concatenate([self._ids, np.empty_like(self._ids)])
        self._ids[self._len] = token
        self._len += 1

    def match(self) -> tuple[int, np.ndarray, np.ndarray]:
        """`(n, token_ids, probabilities)`: the longest match length and what followed it."""
        ids = self._ids[: self._len]
        if self._len < 2:
            return 0, ids[:0], np.zeros(0)
        end = self._len - 1
        found = np.flatnonzero(ids[:end] == ids[end])  # earlier positions ending a 1-token match
        n = 0
        while len(found):
            n += 1
            if n == MAX_N or end - n < 0 or ids[end - n] == _GAP:
                break
            longer = found[found - n >= 0]
            longer = longer[ids[longer - n] == ids[end - n]]
            if not len(longer):
                break
            found = longer
        following = ids[found + 1] if n else ids[:0]
        following = following[~np.isin(following, self.skip)]
        if not len(following):
            return 0, following, np.zeros(0)
        tokens, counts = np.unique(following, return_counts=True)
        return n, tokens, counts / counts.sum()

    def mix(self, log_probs: torch.Tensor) -> torch.Tensor:
        """`log(λ_n·p_cache + (1-λ_n)·p)` for next-token log-probabilities `log_probs` (V,)."""
        n, tokens, probs = self.match()
        lam = self.lambdas[min(n, len(self.lambdas) - 1)] if n else 0.0
        if lam <= 0:
            return log_probs
        out = log_probs + math.log1p(-lam)
        index = torch.from_numpy(tokens)
        cached = torch.from_numpy(np.log(probs * lam)).to(out.dtype)
        out[index] = torch.logaddexp(out[index], cached)
        return out
