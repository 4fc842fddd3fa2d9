"""Run directories: what results.json records, the summary table, plots, and comparing runs."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from codeslm.cli import cli
from codeslm.errors import EvalError
from codeslm.eval.report import compare_runs, load_run, new_run_dir, summary_markdown, write_run


def make_run(root, benchmark, scores, seed=0):
    run_dir = new_run_dir(benchmark, root)
    write_run(run_dir, {"benchmark": benchmark, "model": {"path": "models/tiny"},
                        "index": None, "task_set": {"name": "HumanEval"}, "seed": seed,
                        "settings": {"n": 1}, "scores": scores,
                        "details": {"per_problem_pass_rate": {"HumanEval/0": 1.0,
                                                              "HumanEval/1": 0.5}}})
    return run_dir


def test_run_directory_holds_results_summary_and_plots(tmp_path):
    run_dir = make_run(tmp_path, "humaneval", {"pass@1": 0.25, "pass@10": 0.5})
    results = load_run(run_dir)
    assert results["run_id"] == run_dir.name and run_dir.name.startswith("humaneval-")
    assert results["commit"] and results["seed"] == 0 and results["model"]["path"] == "models/tiny"
    assert results["plots"] == ["scores.png", "pass_rates.png"]
    for name in results["plots"]:
        assert (run_dir / name).read_bytes()[:4] == b"\x89PNG"
    summary = (run_dir / "summary.md").read_text()
    assert "| pass@1 | 0.2500 |" in summary and "models/tiny" in summary
    assert not list(run_dir.glob(".*.tmp"))
    assert new_run_dir("humaneval", tmp_path) != new_run_dir("humaneval", tmp_path)


def test_compare_puts_runs_side_by_side(tmp_path):
    a = make_run(tmp_path, "humaneval", {"pass@1": 0.25}, seed=1)
    b = make_run(tmp_path, "humaneval", {"pass@1": 0.5, "pass@10": 0.75}, seed=2)
    table, plot = compare_runs([a, b], tmp_path / "cmp")
    header, _, first, second, *rest = table.splitlines()
    assert a.name in header and b.name in header
    assert first == "| pass@1 | 0.2500 | 0.5000 |"
    assert second == "| pass@10 |  | 0.7500 |"
    assert "| seed | 1 | 2 |" in rest
    assert plot.read_bytes()[:4] == b"\x89PNG"

    result = CliRunner().invoke(cli, ["eval", "compare", str(a), str(b / "results.json"),
                                      "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    assert "| pass@1 | 0.2500 | 0.5000 |" in result.output and "plot:" in result.output


def test_unreadable_runs_are_refused(tmp_path):
    with pytest.raises(EvalError, match="no results.json"):
        load_run(tmp_path)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(EvalError, match="not valid JSON"):
        load_run(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"benchmark": "x"}))
    with pytest.raises(EvalError, match="no scores"):
        load_run(tmp_path)
    with pytest.raises(EvalError, match="at least one run"):
        compare_runs([])


def test_summary_names_what_produced_the_numbers():
    text = summary_markdown({"benchmark": "bpb", "run_id": "bpb-1", "scores": {"model": 1.5},
                             "model": {"path": "m"}, "index": {"path": "index/r"},
                             "task_set": {"name": "bits per byte"}, "seed": None,
                             "commit": "abc", "settings": {"context_len": 512}})
    assert "| model | 1.5000 |" in text and "| index | index/r |" in text
    assert "| commit | abc |" in text and "`context_len=512`" in text
