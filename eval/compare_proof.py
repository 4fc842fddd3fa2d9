"""Is one model's run of `eval/proof_repo.py` better than another's? Paired per held-out line.

    python eval/compare_proof.py eval/results/proof-repo-A eval/results/proof-repo-B

Both runs must score the same lines (same projects, `--tasks` and `--seed`). For every system
they share (engine variants, the model alone, ...) prints the mean exact match and edit
similarity of each run and the mean change from A to B with a 95 % percentile bootstrap
interval over the lines (`codeslm.eval.stats.bootstrap_ci`, 10,000 resamples), and writes the
table and `compare.json` to a new run directory under `eval/results/`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from codeslm.eval.stats import bootstrap_ci

REPO = Path(__file__).resolve().parent.parent
METRICS = (("exact_match", "EM"), ("edit_similarity", "ES"))


def line_scores(run: Path) -> tuple[str, dict[str, dict[str, tuple[float, float]]]]:
    """`(model, {system: {project/task_id: (EM, ES)}})` from a proof-repo run directory."""
    try:
        proof = json.loads((run / "proof.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SystemExit(f"{run}: not a run of eval/proof_repo.py ({e})") from e
    systems: dict[str, dict[str, tuple[float, float]]] = {}
    for project, info in proof["projects"].items():
        project_run = Path(info["run_dir"])
        if not project_run.is_dir():  # a run kept in the repository, read from another checkout
            project_run = run.parent / project_run.name
        for path in sorted(project_run.glob("tasks-*.jsonl")):
            scores = systems.setdefault(path.stem[len("tasks-"):], {})
            for line in path.open(encoding="utf-8"):
                task = json.loads(line)
                scores[f"{project}/{task['task_id']}"] = tuple(float(task[m]) for m, _ in METRICS)
    return proof["model"], systems


def compare(a: dict, b: dict) -> dict[str, dict]:
    """Per system both runs have: the lines' means in each run and the paired change."""
    out = {}
    for system in sorted(set(a) & set(b)):
        lines = sorted(set(a[system]) & set(b[system]))
        if len(lines) != len(a[system]) or len(lines) != len(b[system]):
            raise SystemExit(f"{system}: the runs score different lines ({len(a[system])} against "
                             f"{len(b[system])}, {len(lines)} shared); give both the same projects, "
                             "--tasks and --seed")
        row = {"lines": len(lines)}
        for i, (metric, _) in enumerate(METRICS):
            before = [a[system][k][i] for k in lines]
            after = [b[system][k][i] for k in lines]
            change = [y - x for x, y in zip(before, after)]
            row[metric] = {"a": sum(before) / len(lines), "b": sum(after) / len(lines),
                           "change": sum(change) / len(lines), "ci": bootstrap_ci(change)}
        out[system] = row
    return out


def table(rows: dict[str, dict]) -> str:
    lines = ["| system | lines | A EM / ES | B EM / ES | change in EM [95 % CI] | change in ES [95 % CI] |",
             "|---|---|---|---|---|---|"]
    for system, row in rows.items():
        em, es = row["exact_match"], row["edit_similarity"]
        cells = [f"{m['change']:+.3f} [{m['ci'][0]:+.3f}, {m['ci'][1]:+.3f}]" for m in (em, es)]
        lines.append(f"| {system} | {row['lines']} | {em['a']:.3f} / {es['a']:.3f} | "
                     f"{em['b']:.3f} / {es['b']:.3f} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="the base run (eval/results/proof-repo-...)")
    parser.add_argument("b", type=Path, help="the run compared with it")
    parser.add_argument("--out", type=Path, default=REPO / "eval" / "results")
    args = parser.parse_args(argv)
    model_a, a = line_scores(args.a)
    model_b, b = line_scores(args.b)
    rows = compare(a, b)
    if not rows:
        raise SystemExit("the runs share no system")
    from codeslm.eval.report import new_run_dir

    out = new_run_dir("compare-proof", args.out)
    text = f"A: {model_a} ({args.a})\nB: {model_b} ({args.b})\n\n" + table(rows)
    (out / "compare.md").write_text(text + "\n", encoding="utf-8")
    (out / "compare.json").write_text(json.dumps(
        {"a": {"model": model_a, "run": str(args.a)}, "b": {"model": model_b, "run": str(args.b)},
         "systems": rows}, indent=2) + "\n", encoding="utf-8")
    print(text)
    print(f"table and scores in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
