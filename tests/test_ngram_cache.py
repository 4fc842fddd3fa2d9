"""The token n-gram cache: longest matches and what followed them, a mixture that stays a
distribution, and an engine that copies a name from far outside the model's prompt window."""

from __future__ import annotations

import json
import math

import pytest
import torch
from completion_fixtures import train_nano_model

from codeslm.complete import CompletionEngine, CompletionRequest, CompletionSettings
from codeslm.errors import ModelError
from codeslm.model.loading import load_model
from codeslm.model.ngram_cache import CONFIG_KEY, LAMBDAS, MAX_N, NgramCache, model_lambdas


def test_longest_match_decides_what_is_proposed():
    # History ends in 1 2 3: "2 3" was followed by 9 once, "1 2 3" by 7 twice.
    cache = NgramCache([[1, 2, 3, 7, 5, 2, 3, 9, 1, 2, 3, 7]], [4, 1, 2, 3])
    n, tokens, probs = cache.match()
    assert n == 3
    assert tokens.tolist() == [7] and probs.tolist() == [1.0]
    cache.append(8)  # nothing earlier ends in 8
    assert cache.match()[0] == 0


def test_ties_share_the_probability_and_segments_never_join():
    cache = NgramCache([[5, 6], [5, 7], [5]], [5])
    n, tokens, probs = cache.match()
    # The last segment's 5 is followed by a gap, not by the history's 5.
    assert n == 1 and tokens.tolist() == [6, 7] and probs.tolist() == [0.5, 0.5]


def test_special_tokens_are_never_proposed_and_matches_stop_at_max_n():
    cache = NgramCache([[3, 4, 99]], [3, 4], skip_ids=[99])
    assert cache.match()[0] == 0
    run = list(range(100, 100 + MAX_N + 5))
    cache = NgramCache([run + [1]], run)
    n, tokens, _ = cache.match()
    assert n == MAX_N and tokens.tolist() == [1]


def test_mix_is_a_distribution_that_favours_the_copied_token():
    log_p = torch.log_softmax(torch.randn(50, generator=torch.Generator().manual_seed(0)), -1)
    cache = NgramCache([[1, 2, 3, 42]], [1, 2, 3])
    mixed = cache.mix(log_p.clone())
    assert float(mixed.exp().sum()) == pytest.approx(1.0, abs=1e-5)
    lam = LAMBDAS[3]
    expected = lam + (1 - lam) * float(log_p[42].exp())
    assert float(mixed[42].exp()) == pytest.approx(expected, rel=1e-5)
    assert float(mixed[0]) == pytest.approx(float(log_p[0]) + math.log1p(-lam), rel=1e-5)
    unmatched = NgramCache([[1, 2]], [7])
    assert torch.equal(unmatched.mix(log_p.clone()), log_p)
    with pytest.raises(ValueError, match="cache weights"):
        NgramCache([], [1], lambdas=(0.0, 1.5))


@pytest.fixture(scope="module")
def nano():
    return train_nano_model(steps=300)


def test_engine_copies_a_name_from_beyond_the_prompt_window(nano):
    model, tokenizer = nano
    earlier = "def run(widget):\n    # polish the widget\n    return kerfuffle(widget)\n\n\n"
    filler = "".join(f"X_{i} = {i}\n" for i in range(60))
    request = CompletionRequest(earlier + filler + "def run(widget):\n    # polish the widget\n    return",
                                "\n", "far.py")
    # The window holds only the last function: the earlier one is 200+ tokens back.
    settings = CompletionSettings(retrieval=False, prefix_tokens=24, line_budget_ms=None)
    with_cache = CompletionEngine(model, tokenizer, None, settings).complete(request)
    assert with_cache.prompt_tokens < 64
    assert with_cache.text == " kerfuffle(widget)"
    without = CompletionEngine(model, tokenizer, None, CompletionSettings(
        retrieval=False, prefix_tokens=24, line_budget_ms=None, ngram_cache=False)).complete(request)
    assert "kerfuffle" not in without.text


def test_engine_takes_the_cache_weights_fitted_for_its_model(nano, tmp_path):
    model, tokenizer = nano
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert model_lambdas(load_model(tmp_path, device="cpu")[0].config) == LAMBDAS
    # Weights of zero for every match length: the cache is there but never trusted.
    config = json.loads((tmp_path / "config.json").read_text())
    config[CONFIG_KEY] = [0.0] * (MAX_N + 1)
    (tmp_path / "config.json").write_text(json.dumps(config))
    fitted, tokenizer = load_model(tmp_path, device="cpu")
    assert model_lambdas(fitted.config) == (0.0,) * (MAX_N + 1)
    earlier = "def run(widget):\n    # polish the widget\n    return kerfuffle(widget)\n\n\n"
    filler = "".join(f"X_{i} = {i}\n" for i in range(60))
    request = CompletionRequest(earlier + filler + "def run(widget):\n    # polish the widget\n    return",
                                "\n", "far.py")
    settings = CompletionSettings(retrieval=False, prefix_tokens=24, line_budget_ms=None)
    engine = CompletionEngine(fitted, tokenizer, None, settings)
    assert engine.ngram_lambdas == (0.0,) * (MAX_N + 1)
    assert "kerfuffle" not in engine.complete(request).text
    fitted.config.ngram_cache_lambdas = [0.0, 2.0]
    with pytest.raises(ModelError, match=CONFIG_KEY):
        CompletionEngine(fitted, tokenizer, None, settings)
