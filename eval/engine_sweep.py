"""Completion-engine settings compared on development packages, never on the proof projects.

    python eval/engine_sweep.py                                   # the defaults and a few alternatives
    python eval/engine_sweep.py --set cache_k=16 --set k=2,context_share=0.75 --tasks 300

Each `--set` is one engine setting over the defaults of `CompletionSettings` (comma-separated
`name=value` pairs); the defaults themselves always run first. Every setting completes the same
held-out lines (`codeslm eval repo`'s task) of packages of the corpus's validation split
(default: `dateutil`, `packaging` and `click` from this environment's site-packages) with the
shipped model and BM25. Knobs are chosen here so that `eval/proof_repo.py` reports on projects
no choice looked at. Prints one table of exact match / edit similarity and writes it with a bar
chart (`sweep.png`) and `sweep.json` to a new run directory under `eval/results/`.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import sys
import sysconfig
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from proof_repo import corpus_packages, plot, score_table  # noqa: E402

SITE = Path(sysconfig.get_paths()["purelib"])
PACKAGES = ("dateutil", "packaging", "click")
ALTERNATIVES = ("cache_k=16", "cache_k=32", "context_share=0", "context_share=0.75")


def parse_setting(text: str) -> dict:
    """`{"cache_k": 16, ...}` from `cache_k=16,...`: Python literals, bare words as strings."""
    from codeslm.complete import CompletionSettings

    defaults = {f.name: f.default for f in dataclasses.fields(CompletionSettings)}
    setting = {}
    for pair in filter(None, text.split(",")):
        name, sep, value = (part.strip() for part in pair.partition("="))
        if not sep or name not in defaults:
            raise SystemExit(f"--set {text!r}: give name=value with a CompletionSettings field "
                             f"({', '.join(defaults)})")
        if isinstance(defaults[name], bool):
            setting[name] = value.lower() in ("1", "true", "yes")
            continue
        try:
            setting[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            setting[name] = value  # e.g. mode=hybrid
    return setting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repos", nargs="*", type=Path,
                        help=f"repositories [default: {', '.join(PACKAGES)} from {SITE}]")
    parser.add_argument("--set", dest="settings", action="append", metavar="NAME=VALUE,...",
                        help=f"an engine setting to compare (repeatable) [default: {' '.join(ALTERNATIVES)}]")
    parser.add_argument("--model", default=None, help="model directory [default: the shipped one]")
    parser.add_argument("--tasks", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "eval" / "results")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from codeslm.complete import CompletionEngine, CompletionSettings
    from codeslm.errors import CodeslmError
    from codeslm.eval.repo_lines import RepoLines
    from codeslm.eval.report import new_run_dir
    from codeslm.eval.runs import generate_completions, open_or_build_datastore, open_or_build_index
    from codeslm.model.loading import load_model

    torch.set_num_threads(1)  # single-token decoding is fastest on one thread here
    repos = args.repos or [SITE / name for name in PACKAGES]
    missing = [str(r) for r in repos if not r.is_dir()]
    if missing:
        raise SystemExit(f"no such repository: {', '.join(missing)}")
    held_out = corpus_packages("val")
    for repo in repos:
        if held_out and repo.name not in held_out:
            print(f"warning: {repo.name} is not a validation-split package", file=sys.stderr)
    variants = {"defaults": {}}
    for text in args.settings or ALTERNATIVES:
        variants[text] = parse_setting(text)
    try:
        model, tokenizer = load_model(args.model, device="cpu")
    except CodeslmError as e:
        raise SystemExit(str(e)) from e

    started = time.time()
    rows: dict[str, dict[str, dict]] = {name: {} for name in variants}
    for repo in repos:
        task = RepoLines(repo, n_tasks=args.tasks, seed=args.seed)
        examples = task.examples()
        index, index_path = open_or_build_index(task.repo, REPO / "index" / repo.name)
        knn = None
        if any(setting.get("knn_lambda") for setting in variants.values()):
            knn = open_or_build_datastore(index_path, model, tokenizer)
        for name, setting in variants.items():
            settings = CompletionSettings(line_budget_ms=None, **setting)
            engine = CompletionEngine(model, tokenizer, index, settings,
                                      knn if settings.knn_lambda else None)
            completions = generate_completions(task, examples, engine, desc=f"{repo.name} {name}")
            rows[name][repo.name] = task.score(examples, completions).scores
        index.close()

    names = [r.name for r in repos]
    table = score_table(rows, names, "setting")
    out = new_run_dir("engine-sweep", args.out)
    (out / "sweep.md").write_text(table + "\n", encoding="utf-8")
    (out / "sweep.json").write_text(json.dumps({
        "model": args.model or "shipped", "repos": [str(r) for r in repos], "tasks": args.tasks,
        "seed": args.seed, "defaults": dataclasses.asdict(CompletionSettings(line_budget_ms=None)),
        "settings": variants, "scores": rows, "seconds": round(time.time() - started, 1),
    }, indent=2), encoding="utf-8")
    plot(rows, names, out / "sweep.png", "Completion engine settings on development packages")
    print(table)
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
