"""Decoding uses the KV-cache argument the installed transformers expects, without warnings.

transformers 5 renamed `past_key_values` to `cache` and removes the old name in 5.40; a decoder
still passing it would warn now and break on the next release, so any warning fails here.
"""

from __future__ import annotations

import warnings

import pytest


@pytest.fixture(scope="module")
def shipped():
    from codeslm.model.loading import load_model

    return load_model(None, device="cpu")


def test_engine_and_generate_decode_without_deprecation_warnings(shipped):
    from codeslm.complete import CompletionEngine, CompletionRequest, CompletionSettings
    from codeslm.model.generate import generate

    model, tokenizer = shipped
    request = CompletionRequest("import os\n\n\ndef read(path):\n    with open(path) as f:\n        return ",
                                "\n", "io_util.py")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for beams in (1, 4):
            engine = CompletionEngine(model, tokenizer, settings=CompletionSettings(beams=beams))
            first = engine.complete(request)
            # The second call reuses the KV cache of the first.
            again = engine.complete(CompletionRequest(request.prefix + " ", "\n", "io_util.py"))
            assert first.stop_reason and again.reused_tokens > 0
        assert generate(model, tokenizer, "import os\n", max_new_tokens=8)


def test_cancelled_decode_stops_and_leaves_the_cache_usable(shipped):
    from codeslm.complete import CompletionCancelled, CompletionEngine, CompletionRequest

    model, tokenizer = shipped
    engine = CompletionEngine(model, tokenizer)
    request = CompletionRequest("def total(items):\n    result = 0\n    for item in items:\n        ", "\n", "t.py")
    steps = []

    def cancelled() -> bool:
        steps.append(1)
        return len(steps) > 2

    with pytest.raises(CompletionCancelled):
        engine.complete(request, cancelled=cancelled)
    assert len(steps) == 3  # asked before each step, stopped at the first "yes"
    fresh = CompletionEngine(model, tokenizer).complete(request)
    after = engine.complete(request)
    assert after.text == fresh.text and after.reused_tokens > 0
