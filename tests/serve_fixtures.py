"""A real `codeslm serve` app (uvicorn on a free 127.0.0.1 port, in a thread) over the shipped
model and a copy of the sample repository, for the HTTP tests."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import httpx

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample-repo"


@dataclass
class RunningServer:
    service: object
    thread: object  # codeslm.serve.http.ServerThread

    @property
    def url(self) -> str:
        return self.thread.url

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)

    def stop(self) -> None:
        self.thread.stop()
        self.service.close()


def start_server(service, *, api_key: str | None = None, load: bool = True) -> RunningServer:
    """Serve `service` on a free port; with `load`, load its model before returning."""
    from codeslm.serve.http import ServerThread, create_app

    running = RunningServer(service, ServerThread(create_app(service, api_key=api_key)))
    if load:
        service.load()
    return running


def sample_copy(tmp: Path) -> Path:
    root = tmp / "sample-repo"
    shutil.copytree(SAMPLE, root)
    return root
