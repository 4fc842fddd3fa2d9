"""A real `codeslm serve` app (uvicorn on a free 127.0.0.1 port, in a thread) over the shipped
model and a copy of the sample repository, for the HTTP tests and the serving benchmark."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample-repo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningServer:
    url: str
    service: object
    server: object
    thread: threading.Thread

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.service.close()


def start_server(service, *, api_key: str | None = None, max_body_bytes: int = 2 * 1024 * 1024,
                 load: bool = True) -> RunningServer:
    """Serve `service` on a free port; with `load`, load its model and wait until it is ready."""
    import uvicorn

    from codeslm.serve.http import create_app

    port = free_port()
    app = create_app(service, api_key=api_key, max_body_bytes=max_body_bytes)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    running = RunningServer(f"http://127.0.0.1:{port}", service, server, thread)
    if load:
        service.load()
    return running


def sample_copy(tmp: Path) -> Path:
    root = tmp / "sample-repo"
    shutil.copytree(SAMPLE, root)
    return root
