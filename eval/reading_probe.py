"""Does the model read what retrieval hands it? The reading probe (`codeslm.eval.reading`) on
held-out lines of the proof projects (in no training split) or of validation-split packages.

    python eval/reading_probe.py                      # shipped model, boltons, toolz, marshmallow
    python eval/reading_probe.py --validation         # dateutil, packaging, click: for choosing
    python eval/reading_probe.py --model runs/reading/export --tasks 200 eval/repos/toolz-1.2.0

Prints one table (mean over the repositories; per repository with --per-repo) and writes it,
the per-repository summaries and every record to a new run directory under `eval/results/`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_sweep import PACKAGES, SITE  # noqa: E402
from proof_repo import PROJECTS, fetch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repos", nargs="*", type=Path, help="repositories [default: the proof projects]")
    parser.add_argument("--validation", action="store_true",
                        help=f"probe {', '.join(PACKAGES)} from {SITE} instead")
    parser.add_argument("--model", default=None, help="model directory [default: the shipped one]")
    parser.add_argument("--tasks", type=int, default=100, help="held-out lines per repository")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--diagnose", type=int, default=0, metavar="N",
                        help="also record, for N lines per repository, the attention on the chunk "
                             "and each target token's bits (verbatim and edited)")
    parser.add_argument("--diagnose-only", action="store_true",
                        help="record the diagnosis and nothing else (no completions)")
    parser.add_argument("--per-repo", action="store_true", help="also print each repository's table")
    parser.add_argument("--out", type=Path, default=REPO / "eval" / "results")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import numpy as np
    import torch
    from tqdm import tqdm

    from codeslm.eval.reading import (
        build_cases,
        diagnose_cases,
        probe_engines,
        run_cases,
        summarize,
        table,
    )
    from codeslm.eval.repo_lines import RepoLines
    from codeslm.eval.report import new_run_dir, write_records
    from codeslm.eval.runs import open_or_build_index
    from codeslm.model.loading import load_model

    torch.set_num_threads(1)  # single-token decoding is fastest on one thread here
    if args.repos:
        repos = args.repos
    elif args.validation:
        repos = [SITE / name for name in PACKAGES]
    else:
        repos = [fetch(spec, REPO / "eval" / "repos") for spec in PROJECTS]
    model, tokenizer = load_model(args.model, device="cpu")
    started = time.time()
    out = new_run_dir("reading", args.out)
    summaries = {}
    for repo in repos:
        task = RepoLines(repo, n_tasks=args.tasks, seed=args.seed)
        index, _ = open_or_build_index(task.repo, REPO / "index" / task.repo.name)
        cases = build_cases(task, index, seed=args.seed)
        engines = probe_engines(model, tokenizer, index)
        if args.diagnose_only:
            diagnosis = diagnose_cases(cases[: args.diagnose], engines["model"])
            write_records(out, f"diagnosis-{task.repo.name}", diagnosis)
            attention = np.mean([d["chunk_attention_by_layer"] for d in diagnosis], axis=0)
            print(f"{task.repo.name}: attention on the chunk by layer (mean over {len(diagnosis)} "
                  f"prompts, verbatim and edited): {np.round(attention, 3).tolist()}")
            index.close()
            continue
        with tqdm(total=len(cases), desc=task.repo.name, unit="line") as bar:
            records = run_cases(cases, engines, bar.update)
        if args.diagnose:
            write_records(out, f"diagnosis-{task.repo.name}",
                          diagnose_cases(cases[: args.diagnose], engines["model"]))
        index.close()
        summaries[task.repo.name] = summarize(records)
        write_records(out, f"records-{task.repo.name}", records)
        if args.per_repo:
            print(f"\n{task.repo.name}\n" + table({task.repo.name: summaries[task.repo.name]}))
    if args.diagnose_only:
        print(f"written to {out}")
        return
    text = table(summaries)
    print(f"\nmean over {', '.join(summaries)} ({args.tasks} lines each)\n{text}")
    (out / "reading.md").write_text(text + "\n", encoding="utf-8")
    (out / "reading.json").write_text(json.dumps({
        "model": args.model or "shipped", "repos": [str(r) for r in repos], "tasks": args.tasks,
        "seed": args.seed, "summaries": summaries, "seconds": round(time.time() - started, 1),
    }, indent=2), encoding="utf-8")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
