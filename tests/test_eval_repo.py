"""Repository line tasks: what is held out, the copy baseline, and no leaks through retrieval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from codeslm.errors import EvalError
from codeslm.eval.completers import RetrievalCompleter
from codeslm.eval.repo_lines import RepoLines, build_line_tasks, read_code_files, skipped_lines
from codeslm.eval.runs import open_or_build_index, run_repo

MODULE = '''"""Module docstring,
over two lines."""
import os
from collections import OrderedDict

# a comment line
VALUE_{n} = {n}  # trailing comment


def load_{n}(path):
    """Docstring of load_{n}."""
    handle_{n} = open(path)
    text_{n} = handle_{n}.read()
    return process_{n}(text_{n})


def process_{n}(text):
    parts_{n} = text.split(",")
    cleaned_{n} = [p.strip() for p in parts_{n}]
    return OrderedDict((k, VALUE_{n}) for k in cleaned_{n})
'''

JS = '''import { x } from "./x.js";
// a comment
/* a block
   comment */
export function widget(a) {
  const doubled = a * 2;
  return doubled + x;
}
'''


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    for n in range(6):
        (root / f"mod{n}.py").write_text(MODULE.format(n=n))
    (root / "web").mkdir()
    (root / "web" / "widget.js").write_text(JS)
    (root / "README.md").write_text("# Title\n\nSome prose that is not code.\n")
    (root / "broken.py").write_text("x = 1\rdef f():\r    return 2\r")  # lone CR line breaks
    return root


def test_only_parsable_code_files_with_plain_line_breaks_are_used(repo):
    files = read_code_files(repo)
    assert sorted(files) == [f"mod{n}.py" for n in range(6)] + ["web/widget.js"]


def test_comments_docstrings_and_imports_are_skipped(repo):
    files = read_code_files(repo)
    py = files["mod0.py"]
    skipped = {py[i].strip() for i in skipped_lines("mod0.py", py)}
    assert {'"""Module docstring,', 'over two lines."""', "import os",
            "from collections import OrderedDict", "# a comment line",
            '"""Docstring of load_0."""', "VALUE_0 = 0  # trailing comment"} <= skipped
    assert "return process_0(text_0)" not in skipped
    js = files["web/widget.js"]
    skipped_js = {js[i].strip() for i in skipped_lines("web/widget.js", js)}
    assert {'import { x } from "./x.js";', "// a comment", "/* a block", "comment */"} <= skipped_js
    assert "const doubled = a * 2;" not in skipped_js


def test_tasks_are_deterministic_and_rebuild_their_file(repo):
    files = read_code_files(repo)
    tasks = build_line_tasks(files, 15, seed=3)
    assert [t.task_id for t in tasks] == [t.task_id for t in build_line_tasks(files, 15, seed=3)]
    assert [t.task_id for t in tasks] != [t.task_id for t in build_line_tasks(files, 15, seed=4)]
    for task in tasks:
        lines = files[task.path]
        row = task.meta["line"] - 1
        assert task.prefix + lines[row] + task.suffix == "".join(lines)
        assert task.reference == lines[row].rstrip("\n")
        assert len(task.reference.strip()) >= 4
        assert not task.reference.strip().startswith(("#", "import", "from", '"""', "//", "/*"))
    everything = build_line_tasks(files, 10_000, seed=0)
    assert len(everything) == everything[0].meta["candidates"] < 10_000


def test_repo_without_code_is_refused(tmp_path):
    (tmp_path / "notes.md").write_text("# only prose\n")
    with pytest.raises(EvalError, match="no code files"):
        RepoLines(tmp_path)
    with pytest.raises(EvalError, match="not a directory"):
        RepoLines(tmp_path / "missing")


def test_copy_baseline_copies_from_other_files_never_from_the_cursor_onwards(tmp_path):
    (tmp_path / "a.py").write_text("def alpha():\n    first_step()\n    second_step()\n")
    (tmp_path / "b.py").write_text("def beta():\n    first_step()\n    second_step()\n")
    (tmp_path / "c.py").write_text("def gamma():\n    unique_query_line()\n    unique_target_line()\n")
    task = RepoLines(tmp_path, n_tasks=100, seed=0)
    baseline = task.copy_baseline()
    by_id = {e.task_id: e for e in task.examples()}
    assert baseline(by_id["b.py:3"]).strip() == "second_step()"   # found in a.py
    # The only line like c.py's query is the query itself, whose follower is the target.
    assert baseline(by_id["c.py:3"]).strip() != "unique_target_line()"
    first = by_id["a.py:1"]
    assert baseline(first) == ""  # nothing before the cursor to match


def test_retrieval_never_returns_the_target_line(repo, tmp_path):
    task = RepoLines(repo, n_tasks=40, seed=1)
    index, _ = open_or_build_index(task.repo, tmp_path / "index")
    seen = []

    def record(example):
        seen.append(example)
        return ""

    completer = RetrievalCompleter(record, index, k=8)
    for example in task.examples():
        completer(example)
        for hit in completer.hits(example):
            if hit.chunk.path == example.path:
                assert hit.chunk.end_line < example.meta["line"], (example.task_id, hit.chunk)
    assert len(seen) == len(task.examples())
    assert any(ex.context for ex in seen)
    for example in seen:
        # Every line of the modules is unique to its file, so seeing it would be a leak.
        target = example.reference.strip()
        assert all(target not in text for _, text in example.context), example.task_id


def test_run_writes_every_system_and_takes_plugged_in_completers(repo, tmp_path):
    def oracle(example):
        return example.reference + "\nignored second line"

    run_dir, results = run_repo(repo, use_model=False, n_tasks=12, seed=2, out=tmp_path,
                                completers={"oracle": oracle})
    assert results["systems"] == ["copy baseline", "oracle"]
    assert results["scores"]["oracle: exact_match"] == 1.0
    assert 0.0 <= results["scores"]["copy baseline: edit_similarity"] <= 1.0
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["task_set"]["tasks"] == 12 and saved["seed"] == 2 and saved["commit"]
    records = [json.loads(line) for line in (run_dir / "tasks-oracle.jsonl").read_text().splitlines()]
    assert len(records) == 12 and all(r["exact_match"] for r in records)
    assert {"scores.png", "summary.md"} <= {p.name for p in run_dir.iterdir()}
    assert "oracle: exact_match" in (run_dir / "summary.md").read_text()
