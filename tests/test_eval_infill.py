"""HumanEval infilling tasks: the published counts, exact rebuilds, and references that pass."""

from __future__ import annotations

import pytest

from codeslm.errors import EvalError
from codeslm.eval.humaneval import load_problems
from codeslm.eval.infill import HumanEvalInfill, infill_examples


@pytest.fixture(scope="module")
def problems():
    return load_problems()


@pytest.mark.parametrize("mode, count", [("single-line", 1033), ("multi-line", 5815)])
def test_counts_match_the_published_benchmark(problems, mode, count):
    assert len(infill_examples(problems, mode)) == count


@pytest.mark.parametrize("mode", ["single-line", "multi-line"])
def test_reference_middle_rebuilds_the_canonical_solution_exactly(problems, mode):
    by_id = {p["task_id"]: p for p in problems}
    for example in infill_examples(problems, mode):
        problem = by_id[example.meta["problem"]["task_id"]]
        assert example.prefix + example.reference + example.suffix == \
            problem["prompt"] + problem["canonical_solution"]
        assert example.reference.strip(), example.task_id
        assert example.prefix.startswith(problem["prompt"])
        if mode == "single-line":
            assert example.reference.count("\n") == 1


@pytest.mark.parametrize("mode", ["single-line", "multi-line"])
def test_reference_middles_pass_and_blank_middles_are_scored(mode):
    task = HumanEvalInfill(mode=mode, limit=4, workers=2)
    examples = task.examples()
    result = task.score(examples, [[e.reference] for e in examples])
    assert result.scores == {"pass@1": 1.0}
    assert len(result.records) == len(examples)
    assert all(r["middle"] == r["reference"] for r in result.records)
    blank = task.score(examples, [["\n"] for _ in examples])
    assert blank.scores["pass@1"] < 1.0


def test_postprocessing_cuts_single_lines_and_ends_middles_with_a_newline():
    single = HumanEvalInfill(mode="single-line", limit=1)
    example = single.examples()[0]
    assert single.postprocess(example, "    x = 1\n    y = 2\n") == "    x = 1\n"
    assert single.postprocess(example, "    x = 1") == "    x = 1\n"
    multi = HumanEvalInfill(mode="multi-line", limit=1)
    assert multi.postprocess(example, "    x = 1\n    y = 2") == "    x = 1\n    y = 2\n"
    assert single.stop == ("\n",) and multi.stop == ()


def test_unknown_mode_is_refused(problems):
    with pytest.raises(EvalError, match="unknown infilling mode"):
        infill_examples(problems, "random-span")
    with pytest.raises(EvalError, match="unknown infilling mode"):
        HumanEvalInfill(mode="random-span")
