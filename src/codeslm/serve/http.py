"""`codeslm serve`'s HTTP front: llama.cpp's `/infill` and `/completion`, OpenAI's
`/v1/completions`, `/health` and `/v1/models`, as an ASGI app (FastAPI).

Each route turns its body into a `CompletionRequest`, runs it on the service's scheduler (a
client's newer request, or its disconnect, cancels the older one between decode steps) and
writes the result back in the shape that protocol's clients parse (llama.vim, llama.vscode,
Continue). Fields that do not apply to this engine are accepted and listed under
`generation_settings.ignored`. Bad input is a 4xx naming the problem, never a 5xx.
But: what to complete is decided by the engine, not here.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from codeslm.complete import CompletionCancelled, CompletionRequest, CompletionResult
from codeslm.errors import CodeslmError
from codeslm.serve.service import CompletionService

MAX_BODY_BYTES = 2 * 1024 * 1024

class _Body(BaseModel):
    """A body whose unknown fields are accepted and reported back, never a failure."""

    model_config = ConfigDict(extra="allow")

    def ignored(self) -> list[str]:
        """Fields sent that this engine has no use for: sampling (it searches for the most
        probable line), slot and cache controls (the KV cache is always reused), time limits."""
        return sorted(self.model_extra or {})


class ExtraChunk(BaseModel):
    model_config = ConfigDict(extra="allow")
    text: str
    filename: str = ""


class InfillBody(_Body):
    input_prefix: str = ""
    input_suffix: str = ""
    input_extra: list[ExtraChunk] = Field(default_factory=list)
    prompt: str = ""  # the text of the cursor's line before the cursor (llama.vim's "middle")
    n_predict: int = Field(default=-1, ge=-1)
    stop: list[str] = Field(default_factory=list)
    stream: bool = False
    id_slot: int = -1
    n_cmpl: int = Field(default=1, ge=1, le=16)
    response_fields: list[str] | None = None
    model: str | None = None
    # codeslm's own: the current file (retrieval leaves out its chunk at the cursor and after it)
    # and a block instead of a line.
    filename: str | None = None
    multiline: bool | None = None


class CompletionBody(_Body):
    """llama.cpp's native `/completion`: a plain or FIM-rendered `prompt`."""

    prompt: str
    n_predict: int = Field(default=-1, ge=-1)
    stop: list[str] = Field(default_factory=list)
    stream: bool = False
    id_slot: int = -1
    response_fields: list[str] | None = None
    model: str | None = None
    filename: str | None = None
    multiline: bool | None = None


class OpenAICompletionBody(_Body):
    model: str | None = None
    prompt: str | list[str]
    suffix: str | None = None
    max_tokens: int | None = Field(default=None, ge=0)
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = Field(default=1, ge=1, le=16)
    filename: str | None = None
    multiline: bool | None = None


# FIM templates clients render into a prompt: (prefix, suffix, middle) sentinels per family.
FIM_TEMPLATES = (
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5-Coder
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder, ours
    ("<PRE>", "<SUF>", "<MID>"),  # CodeLlama
    ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),  # DeepSeek-Coder
    ("<|fim▁begin|>", "<|fim▁hole|>", "<|fim▁end|>"),
)
_FILE_BLOCK = re.compile(r"(?:<\|?file_sep\|?>|<\|file_separator\|>)")


def split_fim_prompt(prompt: str) -> tuple[str, str, list[tuple[str, str]], str] | None:
    """`(prefix, suffix, extra chunks, filename)` of a FIM-rendered prompt; None for plain text.

    Recognises prefix-suffix-middle prompts in the templates above, with repository-level
    `<file_sep>PATH\\nTEXT` blocks before them (their last header names the current file).
    """
    for pre, suf, mid in FIM_TEMPLATES:
        start = prompt.find(pre)
        if start < 0:
            continue
        s = prompt.find(suf, start)
        m = prompt.find(mid, s if s >= 0 else start)
        if s < 0 or m < 0 or not prompt[m + len(mid):].strip() == "":
            continue
        prefix = prompt[start + len(pre): s]
        suffix = prompt[s + len(suf): m]
        if pre == "<PRE>":  # CodeLlama's template: "<PRE> {prefix} <SUF>{suffix} <MID>"
            prefix, suffix = prefix.removeprefix(" ").removesuffix(" "), suffix.removesuffix(" ")
        chunks, filename = _file_blocks(prompt[:start])
        return prefix, suffix, chunks, filename
    return None


def _file_blocks(header: str) -> tuple[list[tuple[str, str]], str]:
    parts = _FILE_BLOCK.split(header)[1:]
    chunks = []
    for part in parts:
        path, _, text = part.partition("\n")
        chunks.append((path.strip(), text))
    filename = ""
    if chunks and not chunks[-1][1].strip():
        filename = chunks.pop()[0]
    return [c for c in chunks if c[1].strip()], filename


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, str]:
    """`text` up to its first stop string, and that string ('' when none occurs)."""
    hits = [(text.find(s), s) for s in stop if s and s in text]
    if not hits:
        return text, ""
    at, word = min(hits)
    return text[:at], word


def _stop_type(result: CompletionResult, word: str) -> str:
    if result.stop_reason == "cancelled":
        return "none"
    if word:
        return "word"
    if result.stop_reason in ("max_new_tokens", "time_budget"):
        return "limit"
    return "eos"


def infill_response(result: CompletionResult, text: str, word: str, *, model: str, slot: int,
                    settings: dict) -> dict:
    """A llama.cpp `/infill` (and `/completion`) response for `result`, its text cut to `text`."""
    t = result.timings_ms
    prompt_ms = t.get("retrieval", 0.0) + t.get("prompt", 0.0) + t.get("prefill", 0.0)
    predicted_ms = t.get("decode", 0.0)
    evaluated = max(result.prompt_tokens - result.reused_tokens, 0)
    return {
        "index": 0,
        "content": text,
        "tokens": [],
        "id_slot": slot,
        "stop": True,
        "model": model,
        "tokens_predicted": result.new_tokens,
        "tokens_evaluated": result.prompt_tokens,
        "generation_settings": settings,
        "prompt": "",
        "has_new_line": "\n" in text,
        "truncated": False,
        "stop_type": _stop_type(result, word),
        "stopping_word": word,
        "tokens_cached": result.reused_tokens,
        "timings": {
            "prompt_n": evaluated,
            "prompt_ms": prompt_ms,
            "prompt_per_token_ms": prompt_ms / max(evaluated, 1),
            "prompt_per_second": 1000 * evaluated / prompt_ms if prompt_ms else 0.0,
            "predicted_n": result.new_tokens,
            "predicted_ms": predicted_ms,
            "predicted_per_token_ms": predicted_ms / max(result.new_tokens, 1),
            "predicted_per_second": 1000 * result.new_tokens / predicted_ms if predicted_ms else 0.0,
        },
        "codeslm": {
            "retrieved": [{"path": h.path, "start_line": h.start_line, "end_line": h.end_line,
                           "symbol": h.symbol, "in_prompt": h.in_prompt} for h in result.retrieved],
            "notes": result.notes,
            "from_cache": result.from_cache,
            "knn_lambda": result.knn_lambda,
            "total_ms": t.get("total", 0.0),
        },
    }


def select_fields(response: dict, fields: list[str] | None) -> dict:
    """llama.cpp's `response_fields`: only those paths, flattened (`timings/prompt_n` keys)."""
    if fields is None:
        return response
    out = {}
    for name in fields:
        value: Any = response
        for part in name.split("/"):
            if not isinstance(value, dict) or part not in value:
                break
            value = value[part]
        else:
            if name:
                out[name] = value
    return out


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"code": status, "message": message, "type": kind}}, status)


class _Guard:
    """ASGI middleware: with an API key, 401 on every route but /health without it; a request
    body over `limit` bytes gets 413 before any route reads it. (Pure ASGI, so a route still
    sees its client disconnect.)"""

    def __init__(self, app, limit: int, api_key: str | None):
        self.app, self.limit = app, limit
        self.authorization = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.authorization and scope["path"] != "/health" and (
                headers.get(b"authorization") != self.authorization):
            reply = _error(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                           "authentication_error")
            return await reply(scope, receive, send)
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await _error(413, f"request body over {self.limit} bytes")(scope, receive, send)
        body, more = [], True
        size = 0
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await _error(413, f"request body over {self.limit} bytes")(scope, receive, send)
            body.append(chunk)
            more = message.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(body), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def create_app(service: CompletionService, *, api_key: str | None = None,
               max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The ASGI app serving `service`; with `api_key`, every route but /health needs it."""
    app = FastAPI(title="codeslm", docs_url=None, redoc_url=None, openapi_url=None)
    service_started = time.time()
    app.add_middleware(_Guard, limit=max_body_bytes, api_key=api_key)

    @app.exception_handler(_BadBody)
    async def invalid(_request: Request, exc: _BadBody):
        return _error(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail), "not_found_error" if exc.status_code == 404
                      else "invalid_request_error")

    @app.exception_handler(CodeslmError)
    async def bad_request(_request: Request, exc: CodeslmError):
        return _error(400, str(exc))

    def unavailable() -> JSONResponse | None:
        if service.error is not None:
            return _error(503, f"the model could not be loaded: {service.error}", "unavailable_error")
        if not service.ready:
            return _error(503, "Loading model", "unavailable_error")
        return None

    def client_of(request: Request, slot: int) -> str:
        named = request.headers.get("x-codeslm-client")
        if named:
            return named
        host = request.client.host if request.client else "?"
        return f"{host}/{slot}/{request.headers.get('user-agent', '')}"

    async def run(request: Request, completion: CompletionRequest, file, multiline, n_predict,
                  slot: int) -> CompletionResult:
        """The completion, or an empty result for a warm-up (nothing to write: llama.vim and
        llama.vscode send these to prime caches) or for a request a newer one cancelled."""
        if n_predict == 0:
            return CompletionResult(text="", stop_reason="max_new_tokens")
        max_new = None if n_predict is None or n_predict < 0 else n_predict
        work = service.completion_job(completion, file, multiline, max_new)
        try:
            return await service.scheduler.run(client_of(request, slot), work,
                                               disconnected=request.is_disconnected)
        except CompletionCancelled:
            return CompletionResult(text="", stop_reason="cancelled",
                                    notes=["cancelled: a newer request of this client superseded it"])

    def llama_reply(body, result: CompletionResult, model: str):
        """The llama.cpp JSON (or SSE) reply of a finished or cancelled completion."""
        text, word = cut_at_stop(result.text, body.stop)
        settings = {"n_predict": body.n_predict, "stop": body.stop, "multiline": body.multiline,
                    "model": model, "ignored": body.ignored()}
        full = infill_response(result, text, word, model=model, slot=body.id_slot, settings=settings)
        if not body.stream:
            reply = select_fields(full, body.response_fields)
            wanted = getattr(body, "n_cmpl", 1)
            if wanted > 1:  # the beam search's other ended lines, best first (llama.vscode)
                others = [cut_at_stop(t, body.stop) for t in result.alternatives]
                return JSONResponse([reply] + [
                    select_fields({**full, "index": i, "content": t, "stopping_word": w},
                                  body.response_fields)
                    for i, (t, w) in enumerate(others[: wanted - 1], start=1)])
            return JSONResponse(reply)

        async def events():
            if text:
                yield _sse({"content": text, "stop": False, "id_slot": body.id_slot,
                            "multimodal": False, "index": 0})
            yield _sse(select_fields({**full, "content": ""}, body.response_fields))
        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/health")
    async def health():
        return unavailable() or {"status": "ok"}

    @app.get("/v1/models")
    @app.get("/models")
    async def models():
        return unavailable() or {"object": "list", "data": [
            {"id": service.model_name, "object": "model", "created": int(service_started),
             "owned_by": "codeslm"}]}

    @app.post("/infill")
    async def infill(request: Request):
        body = await _parse(request, InfillBody)
        if (busy := unavailable()) is not None:
            return busy
        completion = CompletionRequest(
            body.input_prefix + body.prompt, body.input_suffix,
            extra_context=tuple((c.filename, c.text) for c in body.input_extra if c.text.strip()),
        )
        result = await run(request, completion, body.filename, body.multiline, body.n_predict,
                           body.id_slot)
        return llama_reply(body, result, service.model_name)

    @app.post("/completion")
    @app.post("/completions")
    async def completion(request: Request):
        body = await _parse(request, CompletionBody)
        if (busy := unavailable()) is not None:
            return busy
        completion, file = _from_prompt(body.prompt, None, body.filename)
        result = await run(request, completion, file, body.multiline, body.n_predict, body.id_slot)
        return llama_reply(body, result, service.model_name)

    @app.post("/v1/completions")
    async def openai_completions(request: Request):
        body = await _parse(request, OpenAICompletionBody)
        if (busy := unavailable()) is not None:
            return busy
        prompt = body.prompt if isinstance(body.prompt, str) else "".join(body.prompt[:1])
        if isinstance(body.prompt, list) and len(body.prompt) > 1:
            return _error(422, "prompt: one prompt per request (got a list of "
                               f"{len(body.prompt)})")
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        completion, file = _from_prompt(prompt, body.suffix, body.filename)
        result = await run(request, completion, file, body.multiline, body.max_tokens, -1)
        text, word = cut_at_stop(result.text, stop)
        finish = "length" if _stop_type(result, word) == "limit" else "stop"
        ident = f"cmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        usage = {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.new_tokens,
                 "total_tokens": result.prompt_tokens + result.new_tokens}
        if not body.stream:
            texts = [text] + [cut_at_stop(t, stop)[0] for t in result.alternatives]
            return {"id": ident, "object": "text_completion", "created": created,
                    "model": service.model_name,
                    "choices": [{"text": t, "index": i, "logprobs": None, "finish_reason": finish}
                                for i, t in enumerate(texts[: body.n])],
                    "usage": usage, "generation_settings": {"ignored": body.ignored()}}

        async def events():
            base = {"id": ident, "object": "text_completion", "created": created,
                    "model": service.model_name}
            if text:
                yield _sse({**base, "choices": [{"text": text, "index": 0, "logprobs": None,
                                                 "finish_reason": None}]})
            yield _sse({**base, "choices": [{"text": "", "index": 0, "logprobs": None,
                                             "finish_reason": finish}], "usage": usage})
            yield "data: [DONE]\n\n"
        return StreamingResponse(events(), media_type="text/event-stream")

    return app


class _BadBody(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


async def _parse(request: Request, model: type[BaseModel]):
    """The JSON body as `model` (whatever the Content-Type says): 400 when it is not JSON, 422
    naming each field that is missing or of the wrong type."""
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _BadBody(400, f"the body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise _BadBody(422, f"body: expected a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = [f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
                    for err in e.errors()]
        raise _BadBody(422, "; ".join(problems)) from None


class ServerThread:
    """uvicorn serving `app` on `host:port` in a daemon thread (for tests and benchmarks)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import socket
        import threading

        import uvicorn

        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.url = f"http://{host}:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="codeslm-http")
        self.thread.start()
        while not self.server.started and self.thread.is_alive():
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _from_prompt(prompt: str, suffix: str | None, filename: str | None):
    """A `CompletionRequest` (and the file it is in) from a prompt that may be FIM-rendered."""
    split = split_fim_prompt(prompt) if suffix is None else None
    if split is None:
        return CompletionRequest(prompt, suffix or ""), filename
    prefix, fim_suffix, chunks, named = split
    return CompletionRequest(prefix, fim_suffix, extra_context=tuple(chunks)), filename or named or None


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"
