"""A served workspace on its own: its index in the cache directory, the kNN datastore when asked
(rebuilt after the code changes), and an unusable index path reported, not raised."""

from __future__ import annotations

import time

from serve_fixtures import sample_copy

from codeslm.complete import CompletionRequest
from codeslm.model.loading import load_model
from codeslm.serve.scheduler import CompletionScheduler
from codeslm.serve.workspace import Workspace, cache_index_dir


def wait_for(condition, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_workspace_builds_and_uses_a_knn_datastore_and_rebuilds_it_after_a_change(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    repo = sample_copy(tmp_path)
    model, tokenizer = load_model(None, device="cpu")
    scheduler = CompletionScheduler()
    ws = Workspace(repo, model, tokenizer, scheduler, dense=False, knn=True)
    assert ws.index_dir == cache_index_dir(repo) and ws.index_dir.is_relative_to(tmp_path / "cache")
    ws.start()
    try:
        assert wait_for(lambda: ws.status.knn), ws.status
        result = ws.complete(CompletionRequest("def parse_value(raw):\n    raw = ", "\n", "taskq/x.py"))
        assert result.knn_lambda > 0
        (repo / "taskq" / "extra.py").write_text("def extra_helper(x):\n    return x + 1\n")
        ws.changed()
        # The update drops the datastore of the old code; the workspace builds a new one.
        def rebuilt() -> bool:
            knn = ws.engine.knn
            return knn is not None and "taskq/extra.py" in knn.file_of

        assert wait_for(rebuilt), ws.status
    finally:
        ws.close()
        scheduler.close()


def test_an_index_path_that_is_a_file_is_reported_and_completion_goes_on(tmp_path):
    repo = sample_copy(tmp_path)
    model, tokenizer = load_model(None, device="cpu")
    scheduler = CompletionScheduler()
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("x")
    ws = Workspace(repo, model, tokenizer, scheduler, index_dir=blocked, dense=False, watch=False)
    ws.start()
    try:
        assert wait_for(lambda: ws.status.state != "indexing")
        assert ws.status.state == "error" and "not-a-dir" in ws.status.error
        result = ws.complete(CompletionRequest("x = ", "\n", "taskq/x.py"))
        assert any("completed without retrieval" in n for n in result.notes)
    finally:
        ws.close()
        scheduler.close()


def test_a_corrupt_index_is_rebuilt(tmp_path):
    from codeslm.index import build_index

    repo = sample_copy(tmp_path)
    index_dir = tmp_path / "index"
    build_index(repo, index_dir, dense=False, progress=False)
    (index_dir / "manifest.json").write_text("{ not json")
    model, tokenizer = load_model(None, device="cpu")
    scheduler = CompletionScheduler()
    ws = Workspace(repo, model, tokenizer, scheduler, index_dir=index_dir, dense=False, watch=False)
    ws.start()
    try:
        assert wait_for(lambda: ws.status.state != "indexing")
        assert ws.status.state == "ready" and ws.status.chunks > 0, ws.status
    finally:
        ws.close()
        scheduler.close()


def test_teacher_items_written_by_another_process_are_served_after_the_next_update(tmp_path):
    from codeslm.transfer.run import TransferOptions, transfer
    from codeslm.transfer.teacher import Sampling

    repo = sample_copy(tmp_path)
    model, tokenizer = load_model(None, device="cpu")
    scheduler = CompletionScheduler()
    index_dir = tmp_path / "index"
    ws = Workspace(repo, model, tokenizer, scheduler, index_dir=index_dir, dense=False, watch=False)
    ws.start()
    try:
        assert wait_for(lambda: ws.status.state == "ready"), ws.status
        assert ws.engine.index.teacher_items == 0
        # The shipped model as its own teacher, a few requests only.
        report = transfer(repo, None, index_dir, progress=False, options=TransferOptions(
            item_kinds=("usage",), sampling=Sampling(samples=2, max_new_tokens=16)))
        assert report.items > 0
        ws.changed()
        assert wait_for(lambda: ws.engine.index.teacher_items == report.items), ws.status
    finally:
        ws.close()
        scheduler.close()
