"""Does a teacher's knowledge store lift a smaller student? Line completion on the held-out proof
projects for the student alone, with the text store, with the token-level store, and the
teacher alone (and with the store it wrote itself).

    python eval/transfer_proof.py                       # shipped model teaches the student-nano recipe
    python eval/transfer_proof.py --student runs/x/export --teacher DIR --tasks 300

The student defaults to `runs/student-nano/export`, trained first from
`src/codeslm/train/recipes/student-nano.json` when it is missing. Per project, the teacher writes
usage and external-API examples (`codeslm transfer --items usage,external`) into the project's
index, and the token-level store is built (teacher top-k next tokens keyed by the student's
hidden states); a kNN datastore with one-hot values is measured beside it. Every system runs
through the completion engine with the same settings (no time budget, so scores do not depend on
load) on the same 200 held-out lines per project. Besides EM / ES and cold latency p50, it
measures why a store helps or not: how often an item was in the prompt, how often the reference
line was in a retrieved item, and how often the completion came from one. Indexes and the
teacher's answer cache live under `runs/transfer-proof/` (a re-run reuses them); results go to
a new directory under `eval/results/` (`transfer.json`, `summary.md`, `transfer.png`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROJECTS = ["boltons-26.2.0", "toolz-1.2.0", "marshmallow-4.4.0"]
STUDENT = REPO / "runs" / "student-nano" / "export"
RECIPE = REPO / "src" / "codeslm" / "train" / "recipes" / "student-nano.json"
WORK = REPO / "runs" / "transfer-proof"


def ensure_student(path: Path) -> Path:
    if (path / "config.json").is_file():
        return path
    if path != STUDENT:
        sys.exit(f"no model at {path}")
    print(f"training the student from {RECIPE.relative_to(REPO)} (about 8 minutes on one thread)")
    subprocess.run([sys.executable, "-m", "codeslm.cli", "train", "--recipe", str(RECIPE)], check=True, cwd=REPO)
    return path


def evaluate(name, engine, task, examples) -> dict:
    from tqdm import tqdm

    completions, latencies, with_item, in_item, from_item = [], [], 0, 0, 0
    for example in tqdm(examples, desc=name, unit="line", leave=False):
        engine._recent.clear()  # cold: no keystroke cache between tasks
        result = engine.complete(_request(example))
        line = task.postprocess(example, result.text)
        completions.append([line])
        latencies.append(result.timings_ms["total"])
        items = [h.text for h in result.retrieved if h.kind == "teacher"]
        with_item += bool(items)
        reference = example.reference.strip()
        in_item += bool(reference) and any(reference in text for text in items)
        from_item += bool(line.strip()) and any(line.strip() in text for text in items)
    scores = task.score(examples, completions).scores
    n = len(examples)
    return {"em": scores["exact_match"], "es": scores["edit_similarity"],
            "latency_p50_ms": statistics.median(latencies), "with_item": with_item / n,
            "reference_in_item": in_item / n, "completion_in_item": from_item / n}


def _request(example):
    from codeslm.complete import CompletionRequest

    return CompletionRequest(example.prefix, example.suffix or "", example.path or "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", type=Path, default=STUDENT)
    parser.add_argument("--teacher", type=Path, default=None, help="[default: the shipped model]")
    parser.add_argument("--projects", nargs="+", default=PROJECTS, help="directories under eval/repos/")
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--budget", default=None, help="Transfer budget per project (items or minutes).")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    from codeslm.complete import CompletionEngine, CompletionSettings
    from codeslm.eval.repo_lines import RepoLines
    from codeslm.eval.report import new_run_dir
    from codeslm.index import Index, build_index
    from codeslm.model.knn import KnnDatastore, index_code_files
    from codeslm.model.loading import load_model
    from codeslm.transfer.run import Budget, TransferOptions, transfer
    from codeslm.transfer.teacher import Teacher
    from codeslm.transfer.token_store import build_token_store

    torch.set_num_threads(1)
    student_dir = ensure_student(args.student)
    student = load_model(student_dir, device="cpu")
    teacher = Teacher.load(args.teacher)
    run_dir = new_run_dir("transfer", args.out)
    results = {"student": {"path": str(student_dir), "parameters": sum(p.numel() for p in student[0].parameters())},
               "teacher": teacher.describe(), "tasks": args.tasks, "projects": {}}
    for name in args.projects:
        repo = REPO / "eval" / "repos" / name
        if not repo.is_dir():
            sys.exit(f"{repo} is missing: fetch the proof projects with `python eval/proof_repo.py`")
        index_dir = WORK / name
        build_index(repo, index_dir, dense=False, progress=True)
        started = time.time()
        report = transfer(repo, None, index_dir, teacher=teacher, progress=True,
                          options=TransferOptions(item_kinds=("usage", "external"),
                                                  budget=Budget.parse(args.budget)))
        token = build_token_store(index_dir, args.teacher, student_dir, progress=True)
        onehot = KnnDatastore.build(*student, index_code_files(index_dir), progress=False)
        with_teacher = KnnDatastore.load(index_dir, student[0])
        store = {"teacher_minutes_total": (report.teacher_seconds + _cached_seconds(index_dir)) / 60,
                 "transfer_minutes_this_run": (time.time() - started) / 60, "items": report.items,
                 "requests": report.requests, "units": report.units, "kept": dict(report.tally.kept),
                 "dropped": dict(report.tally.dropped), "ran_in_sandbox": dict(report.tally.ran),
                 "store_bytes": report.store_bytes, "from_cache": report.from_cache,
                 "token_store": token, "token_store_bytes": _dir_bytes(index_dir / "knn")}
        index = Index.open(index_dir)
        task = RepoLines(repo, n_tasks=args.tasks, seed=0)
        examples = task.examples()
        base = CompletionSettings(line_budget_ms=None)
        systems = {
            "student alone": (student, False, None),
            "student + text store": (student, True, None),
            "student + kNN (one-hot)": (student, False, onehot),
            "student + token-level store": (student, False, with_teacher),
            "student + text + token-level": (student, True, with_teacher),
            "teacher alone": ((teacher.model, teacher.tokenizer), False, None),
            "teacher + its own store": ((teacher.model, teacher.tokenizer), True, None),
        }
        scores = {}
        for system, ((model, tokenizer), use_items, knn) in systems.items():
            settings = replace(base, teacher=use_items)
            engine = CompletionEngine(model, tokenizer, index, settings, knn)
            scores[system] = evaluate(f"{name}: {system}", engine, task, examples)
            print(f"{name:20s} {system:30s} EM {scores[system]['em']:.3f}  ES {scores[system]['es']:.3f}  "
                  f"p50 {scores[system]['latency_p50_ms']:.0f} ms", flush=True)
        index.close()
        results["projects"][name] = {"store": store, "scores": scores}
        (run_dir / "transfer.json").write_text(json.dumps(results, indent=2))

    systems = list(next(iter(results["projects"].values()))["scores"])
    mean = {s: {k: float(np.mean([p["scores"][s][k] for p in results["projects"].values()]))
                for k in ("em", "es", "latency_p50_ms", "with_item", "reference_in_item", "completion_in_item")}
            for s in systems}
    results["mean"] = mean
    alone, text, teacher_em = mean["student alone"]["em"], mean["student + text store"]["em"], mean["teacher alone"]["em"]
    results["targets"] = {
        "em_ratio_text_store": text / alone if alone else None,
        "gap_closed_text_store": (text - alone) / (teacher_em - alone) if teacher_em != alone else None,
        "latency_ratio_text_store": mean["student + text store"]["latency_p50_ms"] / mean["student alone"]["latency_p50_ms"],
        "em_ratio_token_store": mean["student + token-level store"]["em"] / alone if alone else None,
        "gap_closed_token_store": (mean["student + token-level store"]["em"] - alone) / (teacher_em - alone)
        if teacher_em != alone else None,
        "latency_ratio_token_store": mean["student + token-level store"]["latency_p50_ms"]
        / mean["student alone"]["latency_p50_ms"],
    }
    (run_dir / "transfer.json").write_text(json.dumps(results, indent=2))

    lines = [f"student {student_dir.name} ({results['student']['parameters'] / 1e6:.2f}M), teacher "
             f"{teacher.name} ({teacher.describe()['parameters'] / 1e6:.2f}M), {args.tasks} lines per project", "",
             "| system | " + " | ".join(f"{p} EM / ES" for p in results["projects"]) + " | mean EM | mean ES | p50 ms |"
             " item in prompt | reference in item | completion from item |",
             "|---" * (len(results["projects"]) + 7) + "|"]
    for s in systems:
        cells = [f"{p['scores'][s]['em']:.3f} / {p['scores'][s]['es']:.3f}" for p in results["projects"].values()]
        m = mean[s]
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {m['em']:.3f} | {m['es']:.3f} | {m['latency_p50_ms']:.0f} |"
                     f" {m['with_item']:.2f} | {m['reference_in_item']:.3f} | {m['completion_in_item']:.3f} |")
    lines += ["", "| project | teacher min | requests | items kept | dropped | sandbox runs | store MB | token store MB |",
              "|---|---|---|---|---|---|---|---|"]
    for p, data in results["projects"].items():
        st = data["store"]
        lines.append(f"| {p} | {st['teacher_minutes_total']:.1f} | {st['requests']} | {st['items']} | "
                     f"{sum(st['dropped'].values())} | {sum(st['ran_in_sandbox'].values())} | "
                     f"{st['store_bytes'] / 1e6:.1f} | {st['token_store_bytes'] / 1e6:.1f} |")
    t = results["targets"]
    lines += ["", f"text store: EM x{_fmt(t['em_ratio_text_store'])} (target 1.3), gap to the teacher closed "
              f"{_fmt(t['gap_closed_text_store'])} (target 0.5), latency x{t['latency_ratio_text_store']:.2f} (target <= 1.2)",
              f"token-level store: EM x{_fmt(t['em_ratio_token_store'])}, gap closed {_fmt(t['gap_closed_token_store'])}, "
              f"latency x{t['latency_ratio_token_store']:.2f}"]
    table = "\n".join(lines) + "\n"
    (run_dir / "summary.md").write_text(table)
    print(table)

    fig, ax = plt.subplots(figsize=(9, 4))
    projects = list(results["projects"])
    width = 0.8 / len(systems)
    for i, s in enumerate(systems):
        ax.bar([j + (i - len(systems) / 2 + 0.5) * width for j in range(len(projects))],
               [results["projects"][p]["scores"][s]["em"] for p in projects], width, label=s)
    ax.set_xticks(range(len(projects)), projects)
    ax.set_ylabel("exact match")
    ax.set_title("line completion: student, teacher stores, teacher")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(run_dir / "transfer.png", dpi=120)
    print(f"results in {run_dir}")


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _cached_seconds(index_dir: Path) -> float:
    """Teacher seconds of earlier runs, from the answer cache (a re-run reports the whole cost)."""
    import sqlite3

    from codeslm.transfer.cache import CACHE_FILE

    with sqlite3.connect(index_dir / CACHE_FILE) as db:
        return float(db.execute("SELECT COALESCE(SUM(seconds), 0) FROM answers").fetchone()[0])


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


if __name__ == "__main__":
    main()
