"""Calling a causal LM with a KV cache under any transformers version codeslm allows.

transformers 5 renamed the forward argument and output field `past_key_values` to `cache`
(the old name warns, and goes in 5.40); 4.x only knows the old one. `forward_cached` passes the
cache under the name the model's `forward` declares and returns the cache the model hands back.
But: it does not decide what to cache or when to crop it (see `codeslm.complete.decode`).
"""

from __future__ import annotations

import inspect
from functools import cache


@cache
def _cache_argument(forward_type: type) -> str:
    parameters = inspect.signature(forward_type.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def forward_cached(model, cache_value, **inputs):
    """`(output, cache)` of `model(**inputs)` continuing from `cache_value` (None: a new cache)."""
    name = _cache_argument(type(model))
    out = model(**inputs, **{name: cache_value}, use_cache=True)
    return out, getattr(out, name)
