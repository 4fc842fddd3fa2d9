"""`codeslm serve` as a user runs it: the real command in a subprocess, its refusal of an open host
without an API key, a clean stop on Ctrl-C, and an index still readable after `kill -9` in the
middle of a background re-index."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from serve_fixtures import SAMPLE

CLI = [sys.executable, "-m", "codeslm.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(args: list[str], tmp_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.Popen([*CLI, "serve", "--port", str(port), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise AssertionError(f"codeslm serve exited: {proc.stderr.read()}")
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("codeslm serve never became healthy")


def test_open_host_needs_an_api_key(tmp_path):
    out = subprocess.run([*CLI, "serve", "--host", "0.0.0.0", "--workspace", str(SAMPLE)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "--api-key" in out.stderr and "0.0.0.0" in out.stderr


def test_serve_answers_and_stops_cleanly_on_ctrl_c(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(SAMPLE, repo)
    proc, url = serve(["--workspace", str(repo), "--no-dense"], tmp_path)
    try:
        reply = httpx.post(f"{url}/infill", json={"input_prefix": "import os\n", "prompt": "x = ",
                                                  "input_suffix": "\n"}, timeout=60)
        assert reply.status_code == 200 and "content" in reply.json()
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert url.split("//")[1] in err and f"workspace {repo.resolve()}, index " in err
    assert "Traceback" not in err
    assert not (repo / "index").exists()  # the served index lives in the cache directory
    assert any((tmp_path / "cache" / "codeslm" / "indexes").iterdir())


def test_index_stays_readable_when_the_server_is_killed_while_re_indexing(tmp_path):
    from codeslm.index import Index, build_index

    repo = tmp_path / "repo"
    shutil.copytree(SAMPLE, repo)
    for i in range(40):  # enough files that a re-index takes a while
        (repo / "taskq" / f"gen_{i}.py").write_text(
            "".join(f"def generated_{i}_{j}(value):\n    return value * {j}\n\n\n" for j in range(60)))
    index_dir = tmp_path / "index"
    build_index(repo, index_dir, dense=False, progress=False)
    before = Index.open(index_dir)
    generation, chunks = before.manifest.generation, len(before)
    before.close()
    proc, _ = serve(["--workspace", str(repo), "--index-dir", str(index_dir), "--no-dense"], tmp_path)
    try:
        for i in range(40):  # every file changes: the watcher starts a re-index
            (repo / "taskq" / f"gen_{i}.py").write_text(f"def changed_{i}(value):\n    return value\n")
        time.sleep(0.3)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    after = Index.open(index_dir)
    try:
        assert after.manifest.generation >= generation
        assert len(after) > 0 and after.search_code("def generated value", k=1)
        if after.manifest.generation == generation:
            assert len(after) == chunks
    finally:
        after.close()
