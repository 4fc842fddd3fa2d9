"""The index manifest: what an index directory holds and which generation of files is current.

The manifest is the commit point of every update: data files of a new generation are written
under new names first, and only replacing `manifest.json` (atomically) makes them current.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from codeslm.errors import IndexFormatError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
KNN_DIR = "knn"  # the model's token-level datastore, when one was built (`codeslm.model.knn`)


@dataclass
class Manifest:
    format_version: int
    chunker_version: int
    generation: int
    repo: str
    dense: bool
    embedding_model: str | None
    embedding_dim: int | None
    created: float
    updated: float
    stats: dict = field(default_factory=dict)

    def file(self, kind: str, generation: int | None = None) -> str:
        """The file name of `kind` ("meta", "bm25", "vocab", "dense") in a generation."""
        g = self.generation if generation is None else generation
        return {"meta": f"meta-{g}.sqlite", "bm25": f"bm25-{g}", "vocab": f"vocab-{g}.json",
                "dense": f"dense-{g}.faiss"}[kind]


def is_index_dir(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def read_manifest(path: Path) -> Manifest:
    """The manifest of the index at `path`; a clear error when it is not a usable index."""
    if not path.is_dir():
        raise IndexFormatError(f"{path} does not exist; build it with `codeslm index REPO`")
    if not is_index_dir(path):
        raise IndexFormatError(f"{path} is not a codeslm index (no {MANIFEST})")
    try:
        data = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IndexFormatError(
            f"{path / MANIFEST} is corrupt ({e}); rebuild with `codeslm index REPO --rebuild`"
        ) from e
    version = data.get("format_version") if isinstance(data, dict) else None
    if version != FORMAT_VERSION:
        raise IndexFormatError(
            f"{path} was written in index format {version!r}, this codeslm reads format "
            f"{FORMAT_VERSION}; rebuild it with `codeslm index REPO --index-dir {path} --rebuild`"
        )
    try:
        return Manifest(**data)
    except TypeError as e:
        raise IndexFormatError(
            f"{path / MANIFEST} is corrupt ({e}); rebuild with `codeslm index REPO --rebuild`"
        ) from e


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Atomically replace the manifest: readers see the old one or the new one, never a mix."""
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", dir=path)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(asdict(manifest), f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path / MANIFEST)
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
