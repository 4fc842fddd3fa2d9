"""eval/compare_proof.py on two hand-written proof-repo runs: paired changes and their intervals."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "eval" / "compare_proof.py"


def load_script():
    spec = importlib.util.spec_from_file_location("compare_proof", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_run(root: Path, model: str, em: list[int], tasks: int | None = None) -> Path:
    project = root / "project"
    project.mkdir(parents=True)
    with (project / "tasks-engine-bm25.jsonl").open("w") as f:
        for i, e in enumerate(em[:tasks]):
            f.write(json.dumps({"task_id": f"t{i}", "exact_match": e, "edit_similarity": 0.5 + e / 4}) + "\n")
    (root / "proof.json").write_text(json.dumps(
        {"model": model, "projects": {"demo==1.0": {"run_dir": str(project)}}}))
    return root


def test_paired_change_with_an_interval_and_a_refusal_of_other_lines(tmp_path, capsys):
    compare_proof = load_script()
    a = write_run(tmp_path / "a", "old", [0] * 20)
    b = write_run(tmp_path / "b", "new", [1] * 5 + [0] * 15)
    assert compare_proof.main([str(a), str(b), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "| engine-bm25 | 20 | 0.000 / 0.500 | 0.250 / 0.562 |" in out
    (run,) = (tmp_path / "out").iterdir()
    row = json.loads((run / "compare.json").read_text())["systems"]["engine-bm25"]["exact_match"]
    assert row["change"] == pytest.approx(0.25)
    low, high = row["ci"]
    assert 0.0 < low < 0.25 < high < 0.5  # five lines gained of twenty: clear of zero, not exact
    fewer = write_run(tmp_path / "c", "new", [1] * 20, tasks=10)
    with pytest.raises(SystemExit, match="score different lines"):
        compare_proof.main([str(a), str(fewer), "--out", str(tmp_path / "out")])
