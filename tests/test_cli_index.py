"""The `codeslm index` and `codeslm search` commands, run as a user runs them."""

import json
import subprocess
import sys
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample-repo"


def codeslm(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "codeslm.cli", *args], cwd=cwd, capture_output=True, text=True,
        timeout=300,
    )


def test_index_then_search_sample_repo(tmp_path):
    r = codeslm("index", str(SAMPLE), "--no-dense", "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "8 files" in r.stdout and (tmp_path / "index/sample-repo/manifest.json").is_file()
    r = codeslm("search", "load config file", "--mode", "bm25", "--json", "-k", "3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)
    assert ("taskq/config.py", "load_config") in [(h["path"], h["symbol"]) for h in hits]
    assert {"start_line", "end_line", "kind", "score", "text"} <= hits[0].keys()
    r = codeslm("index", str(SAMPLE), "--no-dense", "-q", cwd=tmp_path)
    assert "up to date" in r.stdout


def test_cli_errors_are_messages_not_tracebacks(tmp_path):
    r = codeslm("index", str(tmp_path / "missing"), cwd=tmp_path)
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    r = codeslm("search", "x", "--index-dir", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 2 and "not a codeslm index" in r.stderr
    r = codeslm("search", "x", cwd=tmp_path)
    assert r.returncode == 2 and "no index under ./index/" in r.stderr
