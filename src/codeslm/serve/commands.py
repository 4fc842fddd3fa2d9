"""`codeslm serve` (HTTP) and `codeslm lsp` (stdio): options shared by both, then each front.

Heavy imports (torch, FastAPI, pygls) happen inside the commands, so `codeslm --help` stays fast.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
import threading
from pathlib import Path

import click

from codeslm.errors import CodeslmError


def service_options(command):
    """The options every front passes to `ServiceOptions`."""
    options = [
        click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
                     help="A local HF causal-LM directory with FIM tokens [default: the shipped model]."),
        click.option("--index-dir", type=click.Path(path_type=Path), default=None,
                     help="Index of the first workspace [default: in $XDG_CACHE_HOME/codeslm/indexes/]."),
        click.option("--no-dense", is_flag=True, help="BM25 only: no embeddings in served indexes."),
        click.option("--knn", is_flag=True, help="Also build and use the model's kNN datastore."),
        click.option("--knn-lambda", type=click.FloatRange(0, 1), default=None,
                     help="Weight of the kNN datastore; 0 turns it off [default: 0.9 when there is one]."),
        click.option("--multiline", is_flag=True, help="Complete blocks by default, not lines."),
        click.option("--no-watch", is_flag=True,
                     help="Do not watch workspaces for changes on disk (saves still re-index)."),
        click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
                     help="CPU threads for the model; decoding one token at a time is fastest on one."),
        click.option("-q", "--quiet", is_flag=True, help="Log only warnings and errors."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _service(model_dir, index_dir, no_dense, knn, knn_lambda, multiline, no_watch, threads):
    from codeslm.complete import CompletionSettings
    from codeslm.serve.service import CompletionService, ServiceOptions

    settings = CompletionSettings(multiline=multiline, knn_lambda=knn_lambda)
    return CompletionService(ServiceOptions(model_dir=model_dir, index_dir=index_dir,
                                            dense=not no_dense, knn=knn, watch=not no_watch,
                                            settings=settings, threads=threads))


def _logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; one off this machine needs --api-key.")
@click.option("--port", type=click.IntRange(0, 65535), default=8012, show_default=True)
@click.option("--workspace", "workspaces", multiple=True, type=click.Path(path_type=Path),
              help="Repository root to serve (repeatable) [default: the current directory].")
@click.option("--api-key", envvar="CODESLM_API_KEY", default=None,
              help="Require 'Authorization: Bearer KEY' on every route but /health [env: CODESLM_API_KEY].")
@click.option("--max-body-bytes", type=click.IntRange(min=1), default=2 * 1024 * 1024,
              show_default=True, help="Larger request bodies get 413.")
@service_options
def serve_cmd(host, port, workspaces, api_key, max_body_bytes, model_dir, index_dir, no_dense, knn,
              knn_lambda, multiline, no_watch, threads, quiet):
    """Serve completions over HTTP: llama.cpp's /infill and /completion, OpenAI's /v1/completions."""
    import uvicorn

    from codeslm.serve.http import create_app
    from codeslm.serve.workspace import cache_index_dir

    if not _is_loopback(host) and not api_key:
        raise CodeslmError(f"--host {host} is reachable from other machines: set --api-key KEY "
                           "(or CODESLM_API_KEY) to serve there")
    roots = [Path(w) for w in workspaces] or [Path.cwd()]
    for root in roots:
        if not root.is_dir():
            raise CodeslmError(f"workspace {root} is not a directory")
    _logging(quiet)
    service = _service(model_dir, index_dir, no_dense, knn, knn_lambda, multiline, no_watch, threads)
    for root in roots:
        service.add_workspace(root)
    app = create_app(service, api_key=api_key, max_body_bytes=max_body_bytes)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning" if quiet else "info",
                            access_log=not quiet, timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    threading.Thread(target=service.load, daemon=True, name="codeslm-load").start()
    if not quiet:
        model = model_dir or "the shipped model"
        click.echo(f"codeslm serve: http://{host}:{port} (/infill, /completion, /v1/completions, "
                   f"/health, /v1/models) with {model}", err=True)
        for i, root in enumerate(roots):
            where = index_dir if (i == 0 and index_dir) else cache_index_dir(root)
            click.echo(f"  workspace {root.resolve()}, index {where}", err=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass  # uvicorn has shut down on Ctrl-C already and hands the signal back
    finally:
        service.close()
    if not server.started:
        raise CodeslmError(f"could not listen on {host}:{port} (in use?)")
    if not quiet:
        click.echo("codeslm serve: stopped", err=True)


@click.command("lsp")
@service_options
def lsp_cmd(model_dir, index_dir, no_dense, knn, knn_lambda, multiline, no_watch, threads, quiet):
    """Speak the Language Server Protocol on stdio: inline completion (LSP 3.18)."""
    from codeslm.serve.lsp import run_stdio

    _logging(quiet)
    service = _service(model_dir, index_dir, no_dense, knn, knn_lambda, multiline, no_watch, threads)
    try:
        run_stdio(service)  # the model loads once `initialize` has said which
    finally:
        service.close()
        os._exit(0)  # pygls leaves its reader thread blocked on stdin
