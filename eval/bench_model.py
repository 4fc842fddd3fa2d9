"""Benchmark of the default model: training throughput and MFU of the default size against a plain
PyTorch loop of the same model, generation latency (1,024-token prompt + 16 new tokens), and bits
per byte on the validation split and on code in no training split, beside gzip -9 and xz -9.

    python eval/bench_model.py                       # shipped model, default recipe and corpus
    python eval/bench_model.py --compile             # also time the training step under torch.compile
    python eval/bench_model.py --samples-only        # just the greedy samples of the model card

Numbers depend on what else the machine runs: the table prints the load average next to them.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
UNSEEN = ["src/codeslm", "tests", "eval", "examples/sample-repo"]


def time_steps(step, n_steps: int, warmup: int = 2) -> float:
    """Seconds per call of `step` after `warmup` calls."""
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(n_steps):
        step()
    return (time.perf_counter() - start) / n_steps


def training_rows(settings, n_steps: int, compile_model: bool) -> list[dict]:
    """tokens/s and MFU of the codeslm training step and of a plain fp32 PyTorch loop."""
    from codeslm.train.pretrain import build_model, make_optimizer, token_loss, use_bf16
    from codeslm.train.shards import Corpus
    from codeslm.train.stream import StreamSettings, TrainingStream
    from codeslm.train.throughput import flops_per_token, peak_flops

    corpus = Corpus.open(REPO / settings.corpus)
    tokenizer = corpus.load_tokenizer()
    model = build_model(settings, tokenizer)
    flops = flops_per_token(model, settings.seq_len)
    tokens = settings.batch_size * settings.seq_len
    rows = []

    bf16 = use_bf16(settings.precision, "cpu")
    stream = TrainingStream(
        corpus.splits["train"], tokenizer,
        StreamSettings(settings.seq_len, settings.fim_rate, settings.spm_rate, 0.0, settings.seed),
    )
    variants = [("codeslm loop" + (" (bf16 autocast)" if bf16 else ""), False)]
    if compile_model:
        variants.append(("codeslm loop + torch.compile", True))
    for name, compiled in variants:
        ours = copy.deepcopy(model).train()
        forward = torch.compile(ours) if compiled else ours
        optimizer, scheduler = make_optimizer(ours, settings)

        def step(forward=forward, ours=ours, optimizer=optimizer, scheduler=scheduler):
            x, y, w, _ = stream.next_batch(settings.batch_size)
            token_loss(forward, x, y, bf16, weights=w).backward()
            torch.nn.utils.clip_grad_norm_(ours.parameters(), settings.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

        seconds = time_steps(step, n_steps, warmup=3 if compiled else 2)
        rows.append({"name": name, "tok_s": tokens / seconds, "flops": flops, "bf16": bf16})

    plain = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(plain.parameters(), lr=settings.lr)
    data = corpus.splits["train"].tokens
    rng = np.random.default_rng(0)

    def plain_step():
        starts = rng.integers(0, len(data) - settings.seq_len, size=settings.batch_size)
        x = torch.from_numpy(np.stack([np.asarray(data[s : s + settings.seq_len], dtype=np.int64) for s in starts]))
        plain(input_ids=x, labels=x).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = time_steps(plain_step, n_steps)
    rows.append({"name": "plain PyTorch loop (fp32, HF loss)", "tok_s": tokens / seconds, "flops": flops, "bf16": False})
    for row in rows:
        achieved = row["tok_s"] * row["flops"]
        row["mfu_fp32"] = achieved / peak_flops("cpu", False)
        row["mfu_own"] = achieved / peak_flops("cpu", row["bf16"])
    return rows


def latency(model, tokenizer, corpus_dir: Path, runs: int) -> dict:
    """p50/p95 milliseconds of a 1,024-token prompt plus 16 greedy new tokens."""
    from codeslm.model.generate import generate

    text = ""
    with (corpus_dir / "documents.jsonl").open() as f:
        for line in f:
            doc = json.loads(line)
            if doc["split"] == "val":
                text += doc["text"]
            if len(text) > 20_000:
                break
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:1024]
    prompt = tokenizer.decode(ids)
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    for _ in range(3):
        generate(model, tokenizer, prompt, max_new_tokens=16)
    times, new_tokens = [], []
    for _ in range(runs):
        start = time.perf_counter()
        out = generate(model, tokenizer, prompt, max_new_tokens=16)
        times.append(time.perf_counter() - start)
        new_tokens.append(len(tokenizer(out, add_special_tokens=False)["input_ids"]))
    return {"prompt_tokens": n_prompt, "new_tokens": float(np.mean(new_tokens)),
            "p50_ms": 1000 * float(np.percentile(times, 50)), "p95_ms": 1000 * float(np.percentile(times, 95))}


SAMPLES = [  # (prompt, suffix or None for plain continuation)
    ("def add(a, b):\n    return", None),
    ("import os\n\n\ndef read_file(path):\n    with open(path) as f:\n        return", None),
    ("class Stack:\n    def __init__(self):\n        self.items = []\n\n"
     "    def push(self, item):\n        self.items.", None),
    ("def is_even(n):\n    return ", "\n\n\nprint(is_even(4))\n"),
]


def print_samples(model, tokenizer) -> None:
    """A markdown table of greedy completions of `SAMPLES`: plain prompts stop at a blank line,
    infilling at a line end."""
    from codeslm.model.generate import generate
    from codeslm.model.prompt import fim_template

    template = fim_template(tokenizer)
    print("\nGreedy samples:\n\n| prompt | completion |\n|---|---|")
    for prefix, suffix in SAMPLES:
        if suffix is None:
            shown, prompt, stop = repr(prefix), prefix, "\n\n"
        else:
            shown, prompt, stop = f"infill {prefix!r} ▮ {suffix!r}", template.fim_text(prefix, suffix), "\n"
        out = generate(model, tokenizer, prompt, max_new_tokens=32, stop=[stop])
        print(f"| `{shown}` | `{out!r}` |")


def val_texts(corpus_dir: Path, max_bytes: int) -> list[tuple[str, str]]:
    texts, total = [], 0
    with (corpus_dir / "documents.jsonl").open() as f:
        for line in f:
            doc = json.loads(line)
            if doc["split"] != "val":
                continue
            texts.append((doc["path"], doc["text"]))
            total += doc["bytes"]
            if total >= max_bytes:
                break
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model directory [default: the shipped model]")
    parser.add_argument("--recipe", default=str(REPO / "src/codeslm/train/recipes/default.json"))
    parser.add_argument("--train-steps", type=int, default=6)
    parser.add_argument("--latency-runs", type=int, default=50)
    parser.add_argument("--val-bytes", type=int, default=500_000)
    parser.add_argument("--unseen", nargs="+", default=UNSEEN, help="code in no training split")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--samples-only", action="store_true", help="only the greedy samples")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)

    from codeslm.eval.bpb import collect_texts, measure
    from codeslm.model.loading import load_model
    from codeslm.train.settings import load_recipe

    settings = load_recipe(args.recipe)
    corpus_dir = REPO / settings.corpus
    print(f"threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} at start")
    if args.samples_only:
        print_samples(*load_model(args.model, device="cpu"))
        return
    if not args.skip_training:
        print(f"\nTraining step, {settings.size} model, {settings.batch_size}x{settings.seq_len} tokens:")
        from codeslm.train.throughput import peak_flops

        rows = training_rows(settings, args.train_steps, args.compile)
        plain = rows[-1]["tok_s"]
        print(f"  MFU against the fp32 (AVX-512) peak, {peak_flops('cpu', False) / 1e9:.0f} GFLOP/s, and "
              f"against the peak of the precision used (AMX bf16: {peak_flops('cpu', True) / 1e9:.0f} GFLOP/s)")
        print(f"  {'loop':<40} {'tokens/s':>9} {'MFU fp32':>9} {'MFU own':>8} {'vs plain':>9}")
        for r in rows:
            print(f"  {r['name']:<40} {r['tok_s']:>9.0f} {100 * r['mfu_fp32']:>8.1f}% "
                  f"{100 * r['mfu_own']:>7.1f}% {r['tok_s'] / plain:>8.2f}x")

    model, tokenizer = load_model(args.model, device="cpu")
    lat = latency(model, tokenizer, corpus_dir, args.latency_runs)
    print(f"\nGeneration ({lat['prompt_tokens']}-token prompt, {lat['new_tokens']:.1f} new tokens on average, "
          f"{args.latency_runs} runs): p50 {lat['p50_ms']:.0f} ms, p95 {lat['p95_ms']:.0f} ms")

    context_len = model.config.max_position_embeddings
    print(f"\nBits per byte (model reads {context_len}-token windows; compressors see all files at once):")
    print(f"  {'text':<44} {'bytes':>9} {'model':>7} {'gzip -9':>8} {'xz -9':>7}")
    for name, texts in [
        (f"validation split ({corpus_dir.name})", val_texts(corpus_dir, args.val_bytes)),
        ("unseen: " + " ".join(args.unseen), collect_texts([REPO / p for p in args.unseen])),
    ]:
        result = measure(model, tokenizer, texts, context_len=context_len)
        s = result["scores"]
        print(f"  {name[:44]:<44} {result['bytes']:>9} {s['model']:>7.3f} {s['gzip -9']:>8.3f} {s['xz -9']:>7.3f}")
    print_samples(model, tokenizer)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
