"""Does the model read its retrieved context? Bits per byte of each held-out line, teacher-forced,
with and without the chunks `codeslm eval repo` retrieves for it, and with the engine's token
n-gram cache (`codeslm.model.ngram_cache`) over the whole file and those chunks mixed in.

    python eval/retrieval_use.py eval/repos/toolz-1.2.0 eval/repos/boltons-26.2.0
    python eval/retrieval_use.py --fit-cache .venv/lib/python3.11/site-packages/click
    python eval/retrieval_use.py --fit-cache --write --model runs/x/export SITE_PACKAGES/click

Exact match moves only once a model writes whole lines right; this loss moves as soon as the
context makes the true line more likely. `--fit-cache` prints the n-gram cache weights (one per
match length) that minimise this loss on the given repositories: fit them on code that is not
the code you report on; `--write` stores them in the model directory's `config.json`
(`ngram_cache_lambdas`), where the completion engine takes them from. The repositories are fetched by `python eval/proof_repo.py`; each one's
index is the one `codeslm eval repo` uses (built if missing).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

MIN_FIT_TOKENS = 20  # match lengths seen fewer times keep the weight of the length below


@torch.inference_mode()
def line_scores(model, tokenizer, prompt: str, example, target: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per token of `target` after `prompt`: the model's probability, the n-gram cache's longest
    match length and the cache's probability (cache over the example's file and context)."""
    from codeslm.model.ngram_cache import NgramCache

    head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    tail = tokenizer(target, add_special_tokens=False)["input_ids"]
    logits = model(input_ids=torch.tensor([head + tail])).logits[0, len(head) - 1 : -1].float()
    p_lm = torch.softmax(logits, -1)[torch.arange(len(tail)), torch.tensor(tail)].numpy()
    cache = NgramCache.for_text(tokenizer, example.prefix, example.suffix,
                                [text for _, text in example.context])
    lengths, p_cache = np.zeros(len(tail), dtype=int), np.zeros(len(tail))
    for i, token in enumerate(tail):
        n, tokens, probs = cache.match()
        lengths[i], p_cache[i] = n, float(probs[tokens == token].sum())
        cache.append(token)
    return p_lm, lengths, p_cache


def mixed_bits(p_lm, lengths, p_cache, lambdas) -> float:
    lam = np.array(lambdas)[np.minimum(lengths, len(lambdas) - 1)] * (lengths > 0)
    return float(-np.log2((1 - lam) * p_lm + lam * p_cache).sum())


def fit_lambdas(p_lm, lengths, p_cache, max_n: int) -> tuple[float, ...]:
    """Per match length, the weight in [0, 0.95] (steps of 0.01) that minimises the loss."""
    grid = np.round(np.arange(0, 0.96, 0.01), 2)
    lambdas = [0.0]
    for n in range(1, max_n + 1):
        at = lengths == n
        if at.sum() < MIN_FIT_TOKENS:
            lambdas.append(lambdas[-1])
            continue
        losses = [-np.log((1 - g) * p_lm[at] + g * p_cache[at]).sum() for g in grid]
        lambdas.append(float(grid[int(np.argmin(losses))]))
    return tuple(lambdas)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repos", nargs="+", type=Path)
    parser.add_argument("--model", default=None, help="model directory [default: the shipped one]")
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-k", type=int, default=4)
    parser.add_argument("--fit-cache", action="store_true",
                        help="also fit the n-gram cache weights on these repositories and print them")
    parser.add_argument("--write", action="store_true",
                        help="with --fit-cache: store the fitted weights in the model's config.json")
    args = parser.parse_args()
    if args.write and not args.fit_cache:
        parser.error("--write stores fitted weights: give --fit-cache too")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from codeslm.eval.completers import ModelCompleter, RetrievalCompleter
    from codeslm.eval.repo_lines import RepoLines
    from codeslm.eval.runs import open_or_build_index
    from codeslm.model.loading import default_model_dir
    from codeslm.model.ngram_cache import CONFIG_KEY, MAX_N, model_lambdas

    print(f"| repository | lines | without retrieval | with k={args.k} | retrieval lower on "
          f"| without retrieval + n-gram cache | k={args.k} + n-gram cache |")
    print("|---|---|---|---|---|---|---|")
    completer, fit = None, []
    for repo in args.repos:
        task = RepoLines(repo, n_tasks=args.tasks, seed=args.seed)
        if completer is None:
            completer = ModelCompleter(args.model, device="cpu", max_new_tokens=task.max_new_tokens)
            current = model_lambdas(completer.model.config)
        completer.repo_name = task.repo.name
        index, _ = open_or_build_index(task.repo, None)
        retrieval = RetrievalCompleter(completer, index, k=args.k)
        bits = {name: [] for name in ("plain", "retrieved", "plain+cache", "retrieved+cache")}
        for example in tqdm(task.examples(), desc=task.repo.name, unit="line"):
            target = example.reference + "\n"
            line_bytes = len(target.encode("utf-8"))
            with_context = replace(example, context=retrieval.context(example))
            for name, ex in (("plain", example), ("retrieved", with_context)):
                scores = line_scores(completer.model, completer.tokenizer, completer.prompt(ex), ex, target)
                bits[name].append(mixed_bits(*scores, (0.0,)) / line_bytes)
                bits[name + "+cache"].append(mixed_bits(*scores, current) / line_bytes)
                if name == "retrieved":
                    fit.append(scores)
        lower = int(np.sum(np.array(bits["retrieved"]) < np.array(bits["plain"])))
        mean = {name: np.mean(values) for name, values in bits.items()}
        print(f"| {task.repo.name} | {len(bits['plain'])} | {mean['plain']:.3f} | "
              f"{mean['retrieved']:.3f} | {lower}/{len(bits['plain'])} | "
              f"{mean['plain+cache']:.3f} | {mean['retrieved+cache']:.3f} |")
    if args.fit_cache:
        p_lm, lengths, p_cache = (np.concatenate(parts) for parts in zip(*fit, strict=True))
        lambdas = fit_lambdas(p_lm, lengths, p_cache, MAX_N)
        print(f"\nn-gram cache weights fitted on {len(p_lm)} tokens (k={args.k} prompts):")
        print("LAMBDAS = (" + ", ".join(f"{v:.2f}" for v in lambdas) + ")")
        print(f"bits per token: {mixed_bits(p_lm, lengths, p_cache, (0.0,)) / len(p_lm):.3f} model, "
              f"{mixed_bits(p_lm, lengths, p_cache, lambdas) / len(p_lm):.3f} fitted, "
              f"{mixed_bits(p_lm, lengths, p_cache, current) / len(p_lm):.3f} current weights")
        if args.write:
            config_path = Path(args.model or default_model_dir()) / "config.json"
            config = json.loads(config_path.read_text(encoding="utf-8"))
            config[CONFIG_KEY] = list(lambdas)
            config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
            print(f"written to {config_path} ({CONFIG_KEY})")


if __name__ == "__main__":
    main()
