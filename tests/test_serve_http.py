"""`codeslm serve`'s HTTP routes on a real uvicorn server on 127.0.0.1 with the shipped model:
llama.cpp's /infill and /completion (as llama.vim, llama.vscode and Continue send them), OpenAI's
/v1/completions, SSE, newest-wins and cancel on disconnect, index refresh, auth, bad input."""

from __future__ import annotations

import json
import random
import re
import threading
import time

import httpx
import pytest
from serve_fixtures import sample_copy, start_server

from codeslm.complete import CompletionSettings
from codeslm.serve.service import CompletionService, ServiceOptions

PREFIX = "from taskq.config import load_config\n\n\ndef read_settings(path):\n"
MIDDLE = "    config = "
SUFFIX = "\n    return config\n"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    repo = sample_copy(tmp)
    service = CompletionService(ServiceOptions(index_dir=tmp / "index", dense=False))
    service.add_workspace(repo)
    running = start_server(service)
    assert service.workspaces.for_path(repo).wait_ready(60)
    yield running, repo
    running.stop()


def infill_body(**fields) -> dict:
    """What llama.vim sends for a cursor (autoload/llama.vim, s:fim)."""
    body = {
        "id_slot": 0, "input_prefix": PREFIX, "input_suffix": SUFFIX, "input_extra": [],
        "prompt": MIDDLE, "n_predict": 128, "stop": [], "n_indent": 4, "top_k": 40, "top_p": 0.90,
        "samplers": ["top_k", "top_p", "infill"], "stream": False, "cache_prompt": True,
        "t_max_prompt_ms": 500, "t_max_predict_ms": 250,
    }
    body.update(fields)
    return body


def sse_events(text: str) -> list:
    return [json.loads(line[len("data: "):]) if line != "data: [DONE]" else "[DONE]"
            for line in text.splitlines() if line.startswith("data: ")]


def test_health_is_503_while_loading_then_200(tmp_path):
    service = CompletionService(ServiceOptions(dense=False, watch=False))
    running = start_server(service, load=False)
    try:
        with running.client() as http:
            loading = http.get("/health")
            assert loading.status_code == 503 and loading.json()["error"]["message"] == "Loading model"
            assert http.post("/infill", json=infill_body()).status_code == 503
            service.load()
            assert http.get("/health").json() == {"status": "ok"}
            models = http.get("/v1/models").json()
            assert models["object"] == "list" and models["data"][0]["id"] == "codeslm-default"
    finally:
        running.stop()


def test_infill_as_llama_vim_sends_it(served):
    running, _ = served
    with running.client() as http:
        fields = ["content", "timings/prompt_n", "timings/prompt_ms", "timings/prompt_per_token_ms",
                  "timings/prompt_per_second", "timings/predicted_n", "timings/predicted_ms",
                  "timings/predicted_per_token_ms", "timings/predicted_per_second", "truncated",
                  "tokens_cached"]
        reply = http.post("/infill", content=json.dumps(infill_body(response_fields=fields)),
                          headers={"Content-Type": "application/json"})
        assert reply.status_code == 200
        # llama.vim's quick check before it decodes: '^\s*{' and '"content"\s*:"'.
        assert re.match(r"^\s*\{", reply.text) and re.search(r'"content"\s*:"', reply.text)
        data = reply.json()
        assert set(data) == set(fields)
        assert data["content"].strip()
        assert data["timings/predicted_n"] > 0 and data["timings/prompt_ms"] > 0
        # The same cursor again: the prompt's KV cache is reused.
        again = http.post("/infill", json=infill_body(response_fields=fields)).json()
        assert again["tokens_cached"] > 0


def test_infill_full_response_as_llama_vscode_reads_it(served):
    running, _ = served
    with running.client() as http:
        full = http.post("/infill", json=infill_body(n_cmpl=1, model="whatever")).json()
        for key in ("content", "stop", "stop_type", "tokens_predicted", "tokens_evaluated",
                    "tokens_cached", "truncated", "timings", "generation_settings", "model"):
            assert key in full, key
        assert full["stop"] is True and full["stop_type"] in ("eos", "limit", "word")
        ignored = full["generation_settings"]["ignored"]
        assert {"top_k", "top_p", "samplers", "n_indent", "t_max_predict_ms", "cache_prompt"} <= set(ignored)
        assert full["codeslm"]["retrieved"], "the workspace index was used"
        # Several completions asked for: llama.vscode reads a list.
        several = http.post("/infill", json=infill_body(n_cmpl=3)).json()
        assert isinstance(several, list) and 1 <= len(several) <= 3
        contents = [c["content"] for c in several]
        assert contents[0] == full["content"] and len(set(contents)) == len(contents)


def test_infill_warm_up_stop_strings_and_extra_context(served):
    running, _ = served
    with running.client() as http:
        started = time.perf_counter()
        warm = http.post("/infill", json=infill_body(n_predict=0, input_prefix="", input_suffix="", prompt="",
                                                     input_extra=[{"text": "x = 1\n", "time": 0, "filename": "a.py"}],
                                                     response_fields=[""]))
        assert warm.status_code == 200 and warm.json() == {}
        assert time.perf_counter() - started < 1.0
        content = http.post("/infill", json=infill_body()).json()["content"]
        assert content
        word = content[len(content) // 2:]
        cut = http.post("/infill", json=infill_body(stop=["never written", word])).json()
        assert cut["content"] == content[: content.index(word)] and cut["stop_type"] == "word"
        # An editor's extra chunks (llama.vim's ring buffer) go into the prompt.
        extra = [{"text": "def frobnicate_settings(path):\n    return load_config(path)\n",
                  "time": 0, "filename": "taskq/helpers.py"}]
        alone = {"filename": "/elsewhere/settings.py"}  # in no workspace: nothing else retrieved
        without = http.post("/infill", json=infill_body(**alone)).json()["tokens_evaluated"]
        with_extra = http.post("/infill", json=infill_body(input_extra=extra, **alone)).json()["tokens_evaluated"]
        assert with_extra >= without + 15


def test_infill_streams_sse(served):
    running, _ = served
    with running.client() as http:
        plain = http.post("/infill", json=infill_body()).json()["content"]
        reply = http.post("/infill", json=infill_body(stream=True))
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = sse_events(reply.text)
        assert events[-1]["stop"] is True and all(not e["stop"] for e in events[:-1])
        assert "".join(e["content"] for e in events) == plain


def test_completion_route_with_fim_prompt_as_continue_sends_it(served):
    running, _ = served
    with running.client() as http:
        expected = http.post("/infill", json=infill_body()).json()["content"]
        prompt = f"<fim_prefix>{PREFIX}{MIDDLE}<fim_suffix>{SUFFIX}<fim_middle>"
        reply = http.post("/completion", json={"prompt": prompt, "stream": True, "n_predict": 128})
        events = sse_events(reply.text)
        assert "".join(e.get("content", "") for e in events) == expected


@pytest.mark.parametrize("template", [
    "<fim_prefix>{p}<fim_suffix>{s}<fim_middle>",
    "<|fim_prefix|>{p}<|fim_suffix|>{s}<|fim_middle|>",
    "<PRE> {p} <SUF>{s} <MID>",
    "<repo_name>sample<file_sep>taskq/settings.py\n<fim_prefix>{p}<fim_suffix>{s}<fim_middle>",
])
def test_openai_completions_split_fim_templates(served, template):
    running, _ = served
    with running.client() as http:
        explicit = http.post("/v1/completions", json={"prompt": PREFIX + MIDDLE, "suffix": SUFFIX,
                                                      "max_tokens": 64}).json()
        assert explicit["object"] == "text_completion"
        choice = explicit["choices"][0]
        assert choice["text"].strip() and choice["finish_reason"] in ("stop", "length")
        assert explicit["usage"]["total_tokens"] == (explicit["usage"]["prompt_tokens"]
                                                     + explicit["usage"]["completion_tokens"])
        rendered = http.post("/v1/completions", json={
            "model": "codeslm", "prompt": template.format(p=PREFIX + MIDDLE, s=SUFFIX), "max_tokens": 64,
            "temperature": 0.01, "stream": True, "n": 1}).text
        events = sse_events(rendered)
        assert events[-1] == "[DONE]"
        assert "".join(e["choices"][0]["text"] for e in events[:-1]) == choice["text"]


def test_index_refreshes_after_a_file_changes_on_disk(served):
    running, repo = served
    (repo / "taskq" / "retry.py").write_text(
        "def backoff_schedule_for(attempts):\n    return [2 ** n for n in range(attempts)]\n")
    body = infill_body(input_prefix="from taskq.retry import backoff_schedule_for\n\n\ndef plan(n):\n",
                       prompt="    delays = backoff_", input_suffix="\n", filename="taskq/plan.py")
    deadline = time.monotonic() + 10
    with running.client() as http:
        while time.monotonic() < deadline:
            reply = http.post("/infill", json=body).json()
            if any(r["path"] == "taskq/retry.py" for r in reply["codeslm"]["retrieved"]):
                break
            time.sleep(0.1)
        assert any(r["path"] == "taskq/retry.py" for r in reply["codeslm"]["retrieved"])


def test_bad_input_is_4xx_and_the_server_stays_up(served):
    running, _ = served
    with running.client() as http:
        broken = http.post("/infill", content=b'{"input_prefix": "x"', headers={"Content-Type": "application/json"})
        assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]["message"]
        wrong = http.post("/infill", json={"input_prefix": 5, "n_predict": "lots"})
        assert wrong.status_code == 422
        assert "input_prefix" in wrong.json()["error"]["message"] and "n_predict" in wrong.json()["error"]["message"]
        missing = http.post("/v1/completions", json={"max_tokens": 3})
        assert missing.status_code == 422 and "prompt" in missing.json()["error"]["message"]
        assert http.post("/infill", json=[1, 2]).status_code == 422
        assert http.post("/infill", content=b"\xff\xfe").status_code == 400
        assert http.get("/nowhere").status_code == 404
        assert http.get("/infill").status_code == 405
        big = http.post("/infill", json=infill_body(input_prefix="x" * (3 * 1024 * 1024)))
        assert big.status_code == 413
        # A file outside the workspace is never read: the completion runs without retrieval.
        outside = http.post("/infill", json=infill_body(filename="/etc/passwd")).json()
        assert outside["codeslm"]["retrieved"] == []
        assert any("in no workspace" in n for n in outside["codeslm"]["notes"])
        assert http.get("/health").status_code == 200


def test_fuzzed_bodies_never_get_a_5xx(served):
    running, _ = served
    rng = random.Random(0)
    valid = json.dumps(infill_body()).encode()
    values = [None, True, -1, 0, 10**12, 1.5, "", "x" * 50, [], {}, [{"text": 3}], {"a": [1]}]
    statuses = []
    with running.client() as http:
        for i in range(120):
            kind = i % 3
            if kind == 0:  # truncated
                body = valid[: rng.randrange(len(valid))]
            elif kind == 1:  # random bytes
                body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
            else:  # valid JSON, random field types
                fields = infill_body()
                for key in rng.sample(sorted(fields), 3):
                    fields[key] = rng.choice(values)
                body = json.dumps(fields).encode()
            route = rng.choice(["/infill", "/completion", "/v1/completions"])
            statuses.append(http.post(route, content=body, headers={"Content-Type": "application/json"}).status_code)
        assert all(s < 500 for s in statuses), statuses
        assert http.get("/health").status_code == 200


def test_api_key_guards_every_route_but_health(tmp_path):
    service = CompletionService(ServiceOptions(dense=False, watch=False))
    running = start_server(service, api_key="s3cret")
    try:
        with running.client() as http:
            assert http.get("/health").status_code == 200
            assert http.post("/infill", json=infill_body()).status_code == 401
            assert http.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
            ok = http.post("/infill", json=infill_body(), headers={"Authorization": "Bearer s3cret"})
            assert ok.status_code == 200 and ok.json()["content"]
            assert "access-control-allow-origin" not in ok.headers
    finally:
        running.stop()


@pytest.fixture()
def slow_server(tmp_path):
    """A server whose model takes 100 ms more per decode step, so a completion outlasts the
    request that supersedes it or the client that hangs up."""
    service = CompletionService(ServiceOptions(
        dense=False, watch=False, settings=CompletionSettings(line_budget_ms=None, beams=1)))
    running = start_server(service)
    from codeslm.complete.decode import CachedDecoder

    original = CachedDecoder._step

    def slow_step(self, rows):
        time.sleep(0.1)
        return original(self, rows)

    CachedDecoder._step = slow_step
    yield running
    CachedDecoder._step = original
    running.stop()


COMMENT = {"input_prefix": "def parse(path):\n", "prompt": "    # Read the file at path and return",
           "input_suffix": "\n", "n_predict": 48}


def test_newest_request_of_a_client_wins(slow_server):
    stats = slow_server.service.scheduler.stats
    results = {}

    def first():
        with slow_server.client() as http:
            started = time.perf_counter()
            results["first"] = http.post("/infill", json=COMMENT).json()
            results["first_s"] = time.perf_counter() - started

    thread = threading.Thread(target=first)
    thread.start()
    time.sleep(0.25)
    with slow_server.client() as http:
        second = http.post("/infill", json=COMMENT).json()
    thread.join()
    assert results["first"]["content"] == "" and results["first"]["stop_type"] == "none"
    assert "superseded" in results["first"]["codeslm"]["notes"][0]
    assert second["content"].strip()
    assert stats.cancelled >= 1 and stats.cancelled_cpu_s > 0


def test_a_disconnected_client_frees_the_model(slow_server):
    stats = slow_server.service.scheduler.stats
    before = stats.cancelled
    with slow_server.client() as http:
        started = time.perf_counter()
        assert http.post("/infill", json=COMMENT).json()["content"]
        full_s = time.perf_counter() - started
    assert full_s > 0.5
    with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=slow_server.url, timeout=0.25) as http:
        http.post("/infill", json={**COMMENT, "input_prefix": "def load(path):\n"})
    for _ in range(100):
        if stats.cancelled > before:
            break
        time.sleep(0.02)
    assert stats.cancelled == before + 1
    with slow_server.client() as http:
        started = time.perf_counter()
        http.post("/infill", json=COMMENT)
        # No leftover of the abandoned request holds the model.
        assert time.perf_counter() - started < full_s + 1.0
