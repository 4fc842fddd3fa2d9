"""Model shapes: size presets from one knob (`nano`, `micro`, `tiny`) turned into a Llama config.

A small Llama-style decoder (RoPE, RMSNorm, SwiGLU, grouped-query attention) with tied input and
output embeddings, which saves `vocab * d_model` parameters that matter at this size.
But: it builds configs only; the model itself is `transformers.LlamaForCausalLM`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from codeslm.errors import ModelError


@dataclass(frozen=True)
class ModelShape:
    """The knobs that decide a model's size; everything else in the HF config is derived."""

    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    max_seq_len: int = 1024

    def to_dict(self) -> dict:
        return asdict(self)


# About 0.6M, 3.6M and 23M parameters with an 8k vocabulary (tied embeddings included).
SIZES: dict[str, ModelShape] = {
    "nano": ModelShape(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=192),
    "micro": ModelShape(d_model=192, n_layers=5, n_heads=6, n_kv_heads=3, d_ff=512),
    "tiny": ModelShape(d_model=448, n_layers=8, n_heads=7, n_kv_heads=7, d_ff=1216),
}


def model_shape(size: str, **overrides) -> ModelShape:
    """The preset `size` with any non-None `overrides` (field names of `ModelShape`) applied."""
    if size not in SIZES:
        raise ModelError(f"unknown model size {size!r}; choose one of {', '.join(SIZES)}")
    names = {f.name for f in fields(ModelShape)}
    unknown = set(overrides) - names
    if unknown:
        raise ModelError(f"unknown model setting(s) {sorted(unknown)}; known: {sorted(names)}")
    shape = replace(SIZES[size], **{k: v for k, v in overrides.items() if v is not None})
    if shape.d_model % shape.n_heads:
        raise ModelError(f"d_model={shape.d_model} is not divisible by n_heads={shape.n_heads}")
    if shape.n_heads % shape.n_kv_heads:
        raise ModelError(f"n_heads={shape.n_heads} is not divisible by n_kv_heads={shape.n_kv_heads}")
    return shape


def llama_config(shape: ModelShape, vocab_size: int, eos_id: int):
    """A `transformers.LlamaConfig` for `shape` with `vocab_size` embeddings; `eos_id` ends text."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=shape.d_model,
        intermediate_size=shape.d_ff,
        num_hidden_layers=shape.n_layers,
        num_attention_heads=shape.n_heads,
        num_key_value_heads=shape.n_kv_heads,
        max_position_embeddings=shape.max_seq_len,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        attention_bias=False,
        mlp_bias=False,
    )


def count_parameters(model, include_embeddings: bool = True) -> int:
    """Distinct trainable parameters (tied weights counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
    if not include_embeddings:
        total -= model.get_input_embeddings().weight.numel()
    return total
