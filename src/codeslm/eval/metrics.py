"""Scores: unbiased pass@k, exact match and edit similarity of lines, compression baselines.

pass@k is the estimator of Chen et al. (2021), `1 - C(n-c, k) / C(n, k)` per problem, computed
as a product so that large n does not overflow. Edit similarity is `1 - Levenshtein / max(len)`.
But: it does not run code (see `codeslm.eval.sandbox`) or models (see `codeslm.model`).
"""

from __future__ import annotations

import gzip
import lzma
from collections.abc import Sequence

import numpy as np
from rapidfuzz.distance import Levenshtein

from codeslm.errors import EvalError


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c correct) passes."""
    if not 0 <= c <= n or k < 1:
        raise EvalError(f"pass@k needs 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if k > n:
        raise EvalError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(counts: Sequence[tuple[int, int]], ks: Sequence[int]) -> dict[str, float]:
    """`{"pass@k": mean over problems}` for each k that every problem has samples enough for."""
    if not counts:
        raise EvalError("no problems to compute pass@k over")
    smallest = min(n for n, _ in counts)
    return {f"pass@{k}": float(np.mean([pass_at_k(n, c, k) for n, c in counts]))
            for k in ks if k <= smallest}


def exact_match(prediction: str, reference: str) -> bool:
    """Same line once leading and trailing whitespace are ignored."""
    return prediction.strip() == reference.strip()


def edit_similarity(prediction: str, reference: str) -> float:
    """`1 - Levenshtein(a, b) / max(len(a), len(b))` on the stripped lines; 1.0 for two empties."""
    return float(Levenshtein.normalized_similarity(prediction.strip(), reference.strip()))


def compressed_bits_per_byte(data: bytes) -> dict[str, float]:
    """Bits per byte of `data` under `gzip -9` and `xz -9` (the floor a model should beat)."""
    if not data:
        raise EvalError("no bytes to compress")
    sizes = {
        "gzip -9": len(gzip.compress(data, compresslevel=9, mtime=0)),
        "xz -9": len(lzma.compress(data, preset=9)),
    }
    return {name: 8 * size / len(data) for name, size in sizes.items()}
