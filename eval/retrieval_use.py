"""Does the model read its retrieved context? Bits per byte of each held-out line, teacher-forced,
with and without the chunks `codeslm eval repo` retrieves for it.

    python eval/retrieval_use.py eval/repos/toolz-1.2.0 eval/repos/boltons-26.2.0

Exact match moves only once a model writes whole lines right; this loss moves as soon as the
retrieved chunks make the true line more likely. The repositories are fetched by
`python eval/proof_repo.py`; each one's index is the one `codeslm eval repo` uses (built if
missing).
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm


@torch.inference_mode()
def line_bits_per_byte(model, tokenizer, prompt: str, target: str) -> float:
    """Bits per UTF-8 byte of `target` written right after `prompt`."""
    head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    tail = tokenizer(target, add_special_tokens=False)["input_ids"]
    logits = model(input_ids=torch.tensor([head + tail])).logits[0, len(head) - 1 : -1].float()
    nll = torch.nn.functional.cross_entropy(logits, torch.tensor(tail), reduction="sum")
    return float(nll) / math.log(2) / len(target.encode("utf-8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repos", nargs="+", type=Path)
    parser.add_argument("--model", default=None, help="model directory [default: the shipped one]")
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-k", type=int, default=4)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from codeslm.eval.completers import ModelCompleter, RetrievalCompleter
    from codeslm.eval.repo_lines import RepoLines
    from codeslm.eval.runs import open_or_build_index

    print(f"| repository | lines | without retrieval | with k={args.k} | retrieval lower on |")
    print("|---|---|---|---|---|")
    completer = None
    for repo in args.repos:
        task = RepoLines(repo, n_tasks=args.tasks, seed=args.seed)
        if completer is None:
            completer = ModelCompleter(args.model, device="cpu", max_new_tokens=task.max_new_tokens)
        completer.repo_name = task.repo.name
        index, _ = open_or_build_index(task.repo, None)
        retrieval = RetrievalCompleter(completer, index, k=args.k)
        plain, retrieved = [], []
        for example in tqdm(task.examples(), desc=task.repo.name, unit="line"):
            target = example.reference + "\n"
            with_context = replace(example, context=retrieval.context(example))
            for scores, ex in ((plain, example), (retrieved, with_context)):
                scores.append(line_bits_per_byte(completer.model, completer.tokenizer,
                                                 completer.prompt(ex), target))
        lower = int(np.sum(np.array(retrieved) < np.array(plain)))
        print(f"| {task.repo.name} | {len(plain)} | {np.mean(plain):.3f} | "
              f"{np.mean(retrieved):.3f} | {lower}/{len(plain)} |")


if __name__ == "__main__":
    main()
