"""Killing an indexing run at any moment leaves the previous index readable; the next run finishes."""

import contextlib
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from codeslm.index import Index, build_index

WORDS = {1: "alphapayload", 2: "betapayload"}


def write_repo(root: Path, n_files: int, version: int) -> None:
    for i in range(n_files):
        path = root / f"pkg{i % 10}" / f"mod_{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        funcs = "".join(
            f"def handler_{i}_{j}(request):\n    return request.{WORDS[version]}(step={j})\n\n\n"
            for j in range(6)
        )
        path.write_text(funcs)


def run_and_kill(repo: Path, ix: Path, delay: float, dense: bool) -> int:
    code = (
        "import sys; from codeslm.index import build_index; "
        f"build_index(sys.argv[1], sys.argv[2], dense={dense}, progress=False)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(repo), str(ix)])
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    return proc.wait()


def state_of(ix: Path) -> tuple[int, str]:
    """Chunk count and which version of the code the index holds; fails if it is unreadable."""
    index = Index.open(ix)
    v1 = index.search(WORDS[1], k=10_000, mode="bm25")
    v2 = index.search(WORDS[2], k=10_000, mode="bm25")
    index.close()
    assert not (v1 and v2), "an index mixing two runs"
    return len(index), ("v2" if len(v2) > len(v1) else "v1")


def test_killed_runs_leave_a_readable_index(tmp_path):
    repo, ix = tmp_path / "repo", tmp_path / "ix"
    write_repo(repo, 1000, version=1)
    build_index(repo, ix, dense=False, progress=False)
    before = state_of(ix)
    write_repo(repo, 1000, version=2)

    killed = 0
    for delay in [0.2 + 0.15 * i for i in range(20)]:
        rc = run_and_kill(repo, ix, delay, dense=False)
        killed += rc == -signal.SIGKILL
        count, version = state_of(ix)
        assert count == before[0]
        if version == "v2":
            break
    assert killed >= 2  # the kills landed while the run was working
    s = build_index(repo, ix, dense=False, progress=False)
    assert state_of(ix) == (before[0], "v2")
    assert s.files == 1000
    leftovers = [p.name for p in ix.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


@pytest.mark.slow
def test_killed_embedding_run_resumes_from_cache(tmp_path):
    repo, ix = tmp_path / "repo", tmp_path / "ix"
    write_repo(repo, 300, version=1)
    code = (
        "import sys; from codeslm.index import build_index; "
        "build_index(sys.argv[1], sys.argv[2], dense=True, progress=False)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(repo), str(ix)])
    cache = ix / "embeddings-cache.sqlite"
    deadline = time.time() + 300
    cached = 0
    while time.time() < deadline and proc.poll() is None and cached == 0:
        time.sleep(0.2)
        if cache.exists():
            with contextlib.suppress(sqlite3.OperationalError):
                cached = sqlite3.connect(cache).execute("SELECT count(*) FROM vectors").fetchone()[0]
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL and cached > 0
    assert not (ix / "manifest.json").exists()  # nothing committed, nothing half-visible
    s = build_index(repo, ix, dense=True, progress=False)
    assert s.files == 300
    index = Index.open(ix)
    assert len(index) == s.chunks and index.search("handler 7 request", k=1, mode="dense")
    total = sqlite3.connect(cache).execute("SELECT count(*) FROM vectors").fetchone()[0]
    assert total == s.chunks  # vectors from the killed run were kept, none computed twice
