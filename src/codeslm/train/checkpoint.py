"""Crash-safe training checkpoints: everything needed to resume a run exactly.

Each checkpoint is written to a temporary file and renamed into place, then `latest.json` (its
name, size and sha256) is replaced the same way, and only then is the previous checkpoint
removed, so a run killed at any moment still has a complete, verifiable checkpoint on disk.
But: it does not decide when to save or what the run is (see `codeslm.train.pretrain`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from codeslm.errors import TrainingError

POINTER = "latest.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    tmp.replace(path)


def save_checkpoint(run_dir: Path, step: int, state: dict) -> Path:
    """Write `state` as the run's latest checkpoint; returns its path."""
    run_dir.mkdir(parents=True, exist_ok=True)
    pointer = run_dir / POINTER
    previous = json.loads(pointer.read_text())["file"] if pointer.is_file() else None
    name = f"checkpoint-{step:07d}.pt"
    path = run_dir / name
    _write_atomic(path, lambda tmp: torch.save(state, tmp))
    info = {"file": name, "step": step, "bytes": path.stat().st_size, "sha256": _sha256(path)}
    _write_atomic(pointer, lambda tmp: tmp.write_text(json.dumps(info, indent=2) + "\n"))
    if previous and previous != name:
        (run_dir / previous).unlink(missing_ok=True)
    return path


def has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / POINTER).is_file()


def load_checkpoint(run_dir: Path) -> dict:
    """The latest checkpoint's state, after checking it is complete and unaltered."""
    pointer = run_dir / POINTER
    if not pointer.is_file():
        raise TrainingError(f"no checkpoint to resume in {run_dir} (no {POINTER})")
    try:
        info = json.loads(pointer.read_text())
        path = run_dir / info["file"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise TrainingError(f"{pointer} is corrupt: {e}") from e
    if not path.is_file():
        raise TrainingError(f"checkpoint {path} named in {pointer} is missing")
    size = path.stat().st_size
    if size != info.get("bytes"):
        raise TrainingError(
            f"checkpoint {path} is truncated: {size} bytes, expected {info.get('bytes')}"
        )
    if _sha256(path) != info.get("sha256"):
        raise TrainingError(f"checkpoint {path} is corrupt: its sha256 does not match {pointer}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises several kinds for a damaged archive
        raise TrainingError(f"checkpoint {path} cannot be read: {e}") from e
