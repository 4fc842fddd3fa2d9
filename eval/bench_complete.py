"""Completion latency benchmark on this machine's Python standard library.

Samples cursor positions inside real lines of stdlib files and completes each one (single line,
BM25 retrieval on), then types one character and completes again (a warm keystroke): the
suggestion's first character, which the keystroke cache answers, or the file's next one when the
suggestion was empty, where the model runs again on the KV cache of the shared prompt prefix.
Prints p50/p95/p99 of end-to-end time split into retrieval, prompt building (cursor window
included), prefill and decode, and writes `eval/results/bench-complete-<time>/results.json`.

Usage: python eval/bench_complete.py [--model DIR] [--index-dir DIR] [--positions 200]
       [--knn-lambda 0.9]   (with an index built with `codeslm index --knn`)
       [--beams 1]          (greedy decoding instead of the engine's default beam search)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_index import stdlib_copy  # noqa: E402

PARTS = ("retrieval", "prompt", "prefill", "decode", "total")


def sample_cursors(index, n: int, seed: int) -> list[tuple[Path, int, int]]:
    """`n` (file, line, col) cursors inside code lines of indexed Python files, after the indent."""
    repo = Path(index.manifest.repo)
    paths = [r[0] for r in index.store.db.execute(
        "SELECT path FROM files WHERE language = 'python' ORDER BY path")]
    rng = random.Random(seed)
    cursors = []
    while len(cursors) < n:
        path = rng.choice(paths)
        lines = (repo / path).read_text(encoding="utf-8").split("\n")
        candidates = [i for i, ln in enumerate(lines) if len(ln.strip()) >= 8 and not ln.strip().startswith("#")]
        if not candidates:
            continue
        i = rng.choice(candidates)
        line = lines[i]
        indent = len(line) - len(line.lstrip())
        col = rng.randint(indent + 1, len(line) - 1)  # 0-based offset of the cursor in the line
        cursors.append((repo / path, i + 1, col + 1))
    return cursors


def percentiles(values: list[float]) -> dict[str, float]:
    a = np.array(values, dtype=float)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="Model directory [default: the shipped one].")
    parser.add_argument("--index-dir", type=Path, default=None,
                        help="An existing stdlib index (BM25 is enough) [default: build one in a temp dir].")
    parser.add_argument("--positions", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--knn-lambda", type=float, default=0.0,
                        help="Mix in the index's kNN datastore (`codeslm index --knn`) at this weight.")
    parser.add_argument("--beams", type=int, default=None,
                        help="Hypotheses beam search keeps (1: greedy) [default: the engine's].")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; one token at a time is fastest on one thread.")
    args = parser.parse_args()

    import torch

    from codeslm.complete import (
        CompletionEngine,
        CompletionRequest,
        CompletionSettings,
        split_at_cursor,
    )
    from codeslm.index import build_index
    from codeslm.model.loading import default_model_dir

    torch.set_num_threads(args.threads)
    tmp = None
    index_dir = args.index_dir
    if index_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="codeslm-bench-complete-")
        repo = stdlib_copy(Path(tmp.name) / "stdlib")
        index_dir = Path(tmp.name) / "ix"
        print(f"indexing {repo} (BM25) ...", flush=True)
        build_index(repo, index_dir, dense=False, progress=False)

    model_dir = args.model or default_model_dir()
    settings = CompletionSettings(knn_lambda=args.knn_lambda, beams=args.beams)
    engine = CompletionEngine.open(model_dir, index_dir, settings)
    index = engine.index
    cursors = sample_cursors(index, args.positions, args.seed)

    # One completion first, so one-time costs (lazy imports, the token table) are not counted.
    file, line, col = cursors[0]
    engine.complete_file(file, line, col)

    cold = {p: [] for p in PARTS}
    warm = {p: [] for p in PARTS}
    warm_model = {p: [] for p in PARTS}  # warm keystrokes the cache could not answer
    warm_hits, prompt_tokens, reused, lengths = 0, [], [], []
    for file, line, col in cursors:
        prefix, suffix = split_at_cursor(file.read_text(encoding="utf-8"), line, col)
        path = engine.relative_path(file)
        result = engine.complete(CompletionRequest(prefix, suffix, path))
        for p in PARTS:
            cold[p].append(result.timings_ms.get(p, 0.0))
        prompt_tokens.append(result.prompt_tokens)
        lengths.append(len(result.text))
        # The user types one character at the cursor: the suggestion's first one when there is
        # a suggestion (the keystroke cache answers), else the file's (the model runs again,
        # reusing the KV cache of the shared prompt prefix).
        typed = result.text[:1] or suffix[:1]
        if not typed or typed == "\n":
            continue
        nxt = engine.complete(CompletionRequest(prefix + typed, suffix, path))
        warm_hits += nxt.from_cache
        if not nxt.from_cache:
            reused.append(nxt.reused_tokens / max(nxt.prompt_tokens, 1))
            for p in PARTS:
                warm_model[p].append(nxt.timings_ms.get(p, 0.0))
        for p in PARTS:
            warm[p].append(nxt.timings_ms.get(p, 0.0))

    table = {"cold": {p: percentiles(v) for p, v in cold.items()},
             "warm_keystroke": {p: percentiles(v) for p, v in warm.items()}}
    if warm_model["total"]:
        table["warm_model"] = {p: percentiles(v) for p, v in warm_model.items()}
    print(f"\nmodel {model_dir}  index {index_dir}  {len(cursors)} cursors  torch threads {torch.get_num_threads()}")
    print(f"suggestions: {sum(n == 0 for n in lengths)} empty, median {np.median(lengths):.0f} chars")
    print(f"prompt tokens: median {np.median(prompt_tokens):.0f}; warm keystrokes: {len(warm['total'])}, "
          f"{warm_hits} answered by the keystroke cache; the rest reuse a median "
          f"{np.median(reused) if reused else 0:.0%} of the prompt's KV cache")
    print(f"{'ms':<20}" + "".join(f"{p:>11}" for p in PARTS))
    for kind, rows in table.items():
        for q in ("p50", "p95", "p99"):
            print(f"{kind + ' ' + q:<20}" + "".join(f"{rows[p][q]:>11.1f}" for p in PARTS))

    out = ROOT / "eval" / "results" / f"bench-complete-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({
        "model": str(model_dir), "index": str(index_dir), "knn_lambda": args.knn_lambda,
        "beams": engine.settings.beam_count(),
        "positions": len(cursors), "seed": args.seed,
        "torch_threads": torch.get_num_threads(), "warm_cache_hits": warm_hits,
        "empty_suggestions": sum(n == 0 for n in lengths), "median_suggestion_chars": float(np.median(lengths)),
        "median_prompt_tokens": float(np.median(prompt_tokens)), "timings_ms": table,
    }, indent=2))
    print(f"wrote {out / 'results.json'}")
    index.close()
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
