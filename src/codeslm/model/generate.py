"""Decoding with a KV cache (greedy or temperature/top-p sampling, stop strings) and bits per byte.

Works with any HF causal LM. Generation stops at the model's end of text, at the FIM template's
stop tokens (a new file, padding), after `max_new_tokens`, or at the first stop string; other
special tokens (FIM sentinels, repository markers) are never generated.
But: it does not build prompts (see `codeslm.model.prompt`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

from codeslm.errors import ModelError
from codeslm.model.kv_cache import forward_cached


def _stop_token_ids(model, tokenizer) -> set[int]:
    from codeslm.model.prompt import fim_template

    ids = set()
    eos = model.generation_config.eos_token_id if model.generation_config else None
    for value in (eos, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(value)
    try:
        template = fim_template(tokenizer)
    except ModelError:
        return ids
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in template.stop_tokens if t in vocab)
    return ids


def _banned_token_ids(tokenizer, stop_ids: set[int]) -> list[int]:
    """Special tokens a completion never contains (FIM sentinels, repository markers)."""
    return sorted(set(tokenizer.all_special_ids) - stop_ids)


def _next_token(logits: torch.Tensor, temperature: float, top_p: float, generator) -> int:
    """One token from the last position's logits (V,)."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # Keep the smallest set whose mass reaches top_p (always at least the top token).
        keep = sorted_probs.cumsum(-1) - sorted_probs < top_p
        sorted_probs = sorted_probs * keep
        choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=generator))


def _cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    cuts = [text.find(s) for s in stop if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    prompt: str,
    *,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop: Sequence[str] = (),
    seed: int | None = None,
) -> str:
    """The text `model` writes after `prompt`, cut at the first of `stop`.

    Greedy when `temperature` is 0; otherwise samples with `temperature` and nucleus `top_p`,
    reproducibly when `seed` is given. Special tokens in `prompt` (FIM, file separators) are read
    as special tokens.
    """
    if max_new_tokens < 0:
        raise ModelError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ModelError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if not ids:
        ids = [tokenizer.eos_token_id]
    device = next(model.parameters()).device
    generator = None
    if temperature > 0:
        generator = torch.Generator(device="cpu")
        generator.manual_seed(seed if seed is not None else torch.seed())
    stop_ids = _stop_token_ids(model, tokenizer)
    banned = _banned_token_ids(tokenizer, stop_ids)

    input_ids = torch.tensor([ids], device=device)
    past = None
    new: list[int] = []
    text = ""
    for _ in range(max_new_tokens):
        out, past = forward_cached(model, past, input_ids=input_ids, logits_to_keep=1)
        logits = out.logits[0, -1].cpu()
        logits[banned] = -math.inf
        token = _next_token(logits, temperature, top_p, generator)
        if token in stop_ids:
            break
        new.append(token)
        text = tokenizer.decode(new, skip_special_tokens=False)
        if stop:
            text, stopped = _cut_at_stop(text, stop)
            if stopped:
                return text
        input_ids = torch.tensor([[token]], device=device)
    return text


@torch.inference_mode()
def bits_per_byte(
    model, tokenizer, texts: Iterable[str], context_len: int = 512, batch_size: int = 8
) -> float:
    """Next-token loss in bits summed over `texts`, divided by their UTF-8 bytes.

    Each text starts after an end-of-text token, as documents do in training. Long texts are read
    in windows of `context_len` tokens that overlap by half, so every token after the first
    window is predicted from at least `context_len / 2` tokens of context.
    """
    if context_len < 2:
        raise ModelError(f"context_len must be at least 2, got {context_len}")
    device = next(model.parameters()).device
    backend = tokenizer.backend_tokenizer
    eos = tokenizer.eos_token_id
    stride = max(context_len // 2, 1)
    total_bits = 0.0
    total_bytes = 0
    windows: list[tuple[list[int], int]] = []  # (tokens, how many leading targets to skip)

    def flush() -> None:
        nonlocal total_bits
        width = max(len(w) for w, _ in windows)
        batch = torch.full((len(windows), width), eos, dtype=torch.long)
        mask = torch.zeros((len(windows), width - 1), dtype=torch.bool)
        for row, (w, skip) in enumerate(windows):
            batch[row, : len(w)] = torch.tensor(w)
            mask[row, skip : len(w) - 1] = True
        batch = batch.to(device)
        logits = model(input_ids=batch[:, :-1]).logits.float()
        nll = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), batch[:, 1:], reduction="none"
        )
        total_bits += float(nll[mask.to(device)].sum()) / math.log(2)
        windows.clear()

    previous = backend.encode_special_tokens
    backend.encode_special_tokens = True  # text that looks like a special token is plain text
    try:
        for text in texts:
            total_bytes += len(text.encode("utf-8"))
            ids = [eos] + tokenizer(text, add_special_tokens=False)["input_ids"]
            start = 0
            while True:
                window = ids[start : start + context_len + 1]
                # The first window scores every token; later ones only what earlier ones did not.
                skip = 0 if start == 0 else context_len - stride
                windows.append((window, skip))
                if len(windows) == batch_size:
                    flush()
                if start + context_len + 1 >= len(ids):
                    break
                start += stride
    finally:
        backend.encode_special_tokens = previous
    if windows:
        flush()
    if total_bytes == 0:
        raise ModelError("no text to measure bits per byte on")
    return total_bits / total_bytes
