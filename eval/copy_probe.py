"""Can the model copy from its context? Loss on a span of tokens the first time and the second time
it appears in one window.

    python eval/copy_probe.py                                  # the shipped model
    python eval/copy_probe.py runs/default-stage6/export src/codeslm/assets/default-model

A model with induction heads (Olsson et al. 2022, arXiv:2209.11895) predicts the second copy of a
span almost for free, even when the span is random tokens it cannot have memorised; a model
without them gains only what the first copy's topic tells it. Spans of real code come from the
Python files under `--code` (default: the standard library's `json` package). Prints one table of
bits per token.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch


@torch.inference_mode()
def repeat_bits(model, sequences: list[list[int]]) -> tuple[float, float]:
    """Mean bits per token over the first and the second copy of each sequence (its first token
    excluded both times: nothing predicts where a span starts)."""
    first, second = [], []
    for seq in sequences:
        ids = torch.tensor([seq + seq])
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        nll = -logp[torch.arange(ids.shape[1] - 1), ids[0, 1:]] / np.log(2)
        n = len(seq)
        first.append(nll[: n - 1].mean().item())
        second.append(nll[n:].mean().item())
    return float(np.mean(first)), float(np.mean(second))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="model directories [default: the shipped one]")
    parser.add_argument("--code", type=Path, default=Path(json.__file__).parent)
    parser.add_argument("--spans", type=int, default=40)
    parser.add_argument("--length", type=int, default=100, help="tokens per span")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from codeslm.errors import CodeslmError
    from codeslm.model.loading import load_model

    text = "\n".join(p.read_text(encoding="utf-8", errors="replace")
                     for p in sorted(args.code.rglob("*.py")))
    if not text.strip():
        raise SystemExit(f"no Python files under {args.code}")
    print("| model | code, 1st copy | code, 2nd copy | random tokens, 1st | random tokens, 2nd |")
    print("|---|---|---|---|---|")
    for name in args.models or [None]:
        try:
            model, tokenizer = load_model(name, device="cpu")
        except CodeslmError as e:
            raise SystemExit(str(e)) from e
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) < 2 * args.length:
            raise SystemExit(f"{args.code} holds too little code for {args.length}-token spans")
        rng = np.random.default_rng(args.seed)
        starts = rng.integers(0, len(ids) - args.length, size=args.spans)
        code = [ids[s : s + args.length] for s in starts]
        special = set(tokenizer.all_special_ids)
        vocab = np.array([i for i in range(len(tokenizer)) if i not in special])
        random = [rng.choice(vocab, size=args.length).tolist() for _ in range(args.spans)]
        c1, c2 = repeat_bits(model, code)
        r1, r2 = repeat_bits(model, random)
        print(f"| {name or 'shipped'} | {c1:.2f} | {c2:.2f} | {r1:.2f} | {r2:.2f} |")


if __name__ == "__main__":
    main()
