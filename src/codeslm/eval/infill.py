"""HumanEval infilling: fill a masked part of a canonical solution; HumanEval's tests decide.

Bavarian et al. (2022), "Efficient Training of Language Models to Fill in the Middle",
arXiv:2207.14255. Built here from HumanEval itself: single-line masks each non-blank line of a
canonical solution in turn (1,033 tasks), multi-line masks every span from one non-blank line to
another (5,815 tasks, the same counts as the published sets). The model sees the prompt and the
solution before the mask as prefix and the rest as suffix; pass@1 per mode.
But: it needs a model with fill-in-the-middle tokens.
"""

from __future__ import annotations

from codeslm.errors import EvalError
from codeslm.eval.humaneval import load_problems, score_samples
from codeslm.eval.sandbox import Limits
from codeslm.eval.tasks import Example, Task, TaskResult, register

MODES = ("single-line", "multi-line")


def infill_examples(problems: list[dict], mode: str) -> list[Example]:
    """Every masked span of every canonical solution, in problem and line order."""
    if mode not in MODES:
        raise EvalError(f"unknown infilling mode {mode!r}; use one of {', '.join(MODES)}")
    examples = []
    for problem in problems:
        lines = problem["canonical_solution"].splitlines(keepends=True)
        filled = [i for i, line in enumerate(lines) if line.strip()]
        spans = ([(i, i) for i in filled] if mode == "single-line"
                 else [(i, j) for a, i in enumerate(filled) for j in filled[a:]])
        for first, last in spans:
            examples.append(Example(
                task_id=f"{problem['task_id']}/{mode}/{first}-{last}",
                prefix=problem["prompt"] + "".join(lines[:first]),
                suffix="".join(lines[last + 1:]),
                reference="".join(lines[first:last + 1]),
                meta={"problem": problem, "first_line": first, "last_line": last},
            ))
    return examples


@register
class HumanEvalInfill(Task):
    """Fill one line, or a span of lines, of a HumanEval solution from both sides."""

    name = "humaneval-infill"
    citation = "Bavarian et al. 2022, arXiv:2207.14255"
    max_new_tokens = 256

    def __init__(self, mode: str = "single-line", limit: int | None = None,
                 workers: int | None = None, limits: Limits | None = None):
        if mode not in MODES:
            raise EvalError(f"unknown infilling mode {mode!r}; use one of {', '.join(MODES)}")
        self.mode, self.problems = mode, load_problems(limit)
        self.workers, self.limits = workers, limits
        self.stop = ("\n",) if mode == "single-line" else ()

    def examples(self) -> list[Example]:
        return infill_examples(self.problems, self.mode)

    def postprocess(self, example: Example, generation: str) -> str:
        if self.mode == "single-line":
            generation = generation.split("\n", 1)[0]
        # The suffix starts a new line, so the middle must end one.
        return generation if generation.endswith("\n") else generation + "\n"

    def score(self, examples: list[Example], completions: list[list[str]],
              progress=None) -> TaskResult:
        # Each example becomes a sample of a problem whose prompt is the example's prefix and
        # whose completion is the middle plus the suffix: the program is the whole function.
        samples, problems, pairs = [], [], []
        for example, middles in zip(examples, completions, strict=True):
            problem = dict(example.meta["problem"], task_id=example.task_id, prompt=example.prefix)
            problems.append(problem)
            for middle in middles:
                samples.append({"task_id": example.task_id, "completion": middle + example.suffix})
                pairs.append((middle, example.reference))
        result = score_samples(samples, problems, (1,), workers=self.workers,
                               limits=self.limits, progress=progress)
        for record, (middle, reference) in zip(result.records, pairs, strict=True):
            record["middle"], record["reference"] = middle, reference
        result.details.pop("per_problem_pass_rate", None)
        result.details["mode"] = self.mode
        return result

    def describe(self) -> dict:
        return {"name": f"HumanEval infilling, {self.mode}", "citation": self.citation,
                "problems": len(self.problems), "tasks": len(self.examples())}
