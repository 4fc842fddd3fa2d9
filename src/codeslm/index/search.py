"""Searching an index: BM25, dense, and hybrid (reciprocal rank fusion, k=60).

`search` serves natural-language queries; `search_code` serves code-to-code queries from a
cursor and never returns the chunk holding the cursor or anything after it in that file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codeslm.chunking import Chunk
from codeslm.errors import CodeslmError, IndexFormatError
from codeslm.index.bm25 import BM25Index, Vocabulary
from codeslm.index.manifest import Manifest, read_manifest
from codeslm.index.store import MetadataStore
from codeslm.index.tokenize import code_tokens

MODES = ("bm25", "dense", "hybrid")
RRF_K = 60
FUSION_DEPTH = 50  # candidates each retriever hands to the fusion


@dataclass(frozen=True)
class Hit:
    chunk: Chunk
    score: float
    id: int


class Index:
    """A read-only view of one generation of an index directory.

    Example:
        >>> index = Index.open("index/sample-repo")
        >>> [hit.chunk.path for hit in index.search("parse the config file", k=3)]
    """

    def __init__(self, path: Path, manifest: Manifest, store: MetadataStore, ids: np.ndarray,
                 bm25: BM25Index, dense=None):
        self.path = path
        self.manifest = manifest
        self.store = store
        self.ids = ids  # chunk id of each BM25 row, ascending
        self.bm25 = bm25
        self.dense = dense
        self._embedder = None
        self._kinds: dict[str, np.ndarray] = {}

    @classmethod
    def open(cls, path: str | Path) -> Index:
        path = Path(path)
        manifest = read_manifest(path)
        store = MetadataStore.open(path / manifest.file("meta"))
        bm25_dir = path / manifest.file("bm25")
        try:
            vocab = Vocabulary(json.loads((path / manifest.file("vocab")).read_text("utf-8")))
            ids = np.load(bm25_dir / "ids.npy")
            bm25 = BM25Index.load(bm25_dir, vocab)
        except (OSError, ValueError) as e:
            raise IndexFormatError(
                f"{path} has a missing or corrupt BM25 index ({e}); rebuild with --rebuild"
            ) from e
        dense = None
        if manifest.dense:
            from codeslm.index.dense import DenseIndex

            dense = DenseIndex.load(path / manifest.file("dense"))
        return cls(path, manifest, store, ids, bm25, dense)

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, query: str, k: int = 10, mode: str = "hybrid", kind: str | None = None,
               exclude_kinds=()) -> list[Hit]:
        """The `k` chunks best matching a natural-language or code `query`; only chunks of
        `kind` when given, none of `exclude_kinds`."""
        excluded = self._kind_filter(kind, exclude_kinds)
        return self._search(query, k, mode, excluded)

    def search_code(
        self,
        code: str,
        k: int = 10,
        exclude: tuple[str, int] | None = None,
        exclude_files=(),
        mode: str = "bm25",
        kind: str | None = None,
        exclude_kinds=(),
    ) -> list[Hit]:
        """Chunks like `code`, the text around a cursor.

        `exclude=(path, line)` drops the chunk of `path` holding `line` (1-based) and every chunk
        of `path` after it, and with them every teacher item derived from those lines;
        `exclude_files` drops whole files. `kind`/`exclude_kinds` filter as in `search`.
        """
        excluded = list(self.store.ids_of_files(exclude_files))
        if exclude is not None:
            excluded += self.store.ids_at_or_after(*exclude)
        by_kind = self._kind_filter(kind, exclude_kinds)
        ids = np.union1d(np.array(sorted(set(excluded)), dtype=np.int64), by_kind)
        return self._search(code, k, mode, ids)

    def ids_of_kind(self, kind: str) -> np.ndarray:
        """Ids of the chunks of `kind` ("teacher", "function", ...), ascending."""
        if kind not in self._kinds:
            self._kinds[kind] = self.store.ids_of_kind(kind)
        return self._kinds[kind]

    @property
    def teacher_items(self) -> int:
        """How many teacher-written items (`codeslm transfer`) the index holds."""
        from codeslm.index.store import TEACHER_KIND

        return len(self.ids_of_kind(TEACHER_KIND))

    def _kind_filter(self, kind: str | None, exclude_kinds) -> np.ndarray:
        """Ids that the kind filters leave out."""
        out = np.zeros(0, dtype=np.int64)
        for other in exclude_kinds:
            out = np.union1d(out, self.ids_of_kind(other))
        if kind is not None:
            out = np.union1d(out, np.setdiff1d(self.ids, self.ids_of_kind(kind), assume_unique=True))
        return out

    def _search(self, query: str, k: int, mode: str, excluded: np.ndarray) -> list[Hit]:
        if mode not in MODES:
            raise CodeslmError(f"unknown search mode {mode!r}; use one of {', '.join(MODES)}")
        if k <= 0 or len(self.ids) == 0:
            return []
        if mode == "dense" and self.dense is None:
            raise IndexFormatError(
                f"{self.path} was built with --no-dense; search it with --mode bm25 or re-index"
            )
        if mode == "bm25" or (mode == "hybrid" and self.dense is None):
            ranked = self._bm25(query, k, excluded)
        elif mode == "dense":
            ranked = self._dense(query, k, excluded)
        else:
            depth = max(FUSION_DEPTH, k)
            ranked = reciprocal_rank_fusion(
                [self._bm25(query, depth, excluded), self._dense(query, depth, excluded)], k
            )
        chunks = self.store.chunks([cid for cid, _ in ranked])
        return [Hit(chunks[cid], float(score), int(cid)) for cid, score in ranked if cid in chunks]

    def _bm25(self, query: str, k: int, excluded: np.ndarray) -> list[tuple[int, float]]:
        mask = None
        if len(excluded):
            mask = np.ones(len(self.ids), dtype=bool)
            rows = np.searchsorted(self.ids, excluded)
            rows = rows[(rows < len(self.ids)) & (self.ids[np.minimum(rows, len(self.ids) - 1)] == excluded)]
            mask[rows] = False
        rows, scores = self.bm25.search(code_tokens(query), k, mask)
        return [(int(self.ids[r]), float(s)) for r, s in zip(rows, scores)]

    def _dense(self, query: str, k: int, excluded: np.ndarray) -> list[tuple[int, float]]:
        ids, scores = self.dense.search(self.embedder.encode_query(query), k, excluded)
        return [(int(i), float(s)) for i, s in zip(ids, scores)]

    @property
    def embedder(self):
        if self._embedder is None:
            from codeslm.index.dense import Embedder

            self._embedder = Embedder(self.manifest.embedding_model)
            if self._embedder.dim != self.manifest.embedding_dim:
                raise IndexFormatError(
                    f"{self.path} holds {self.manifest.embedding_dim}-d embeddings but "
                    f"{self.manifest.embedding_model} makes {self._embedder.dim}-d ones; re-index"
                )
        return self._embedder

    def close(self) -> None:
        self.store.close()


def reciprocal_rank_fusion(
    rankings: list[list[tuple[int, float]]], k: int, rrf_k: int = RRF_K
) -> list[tuple[int, float]]:
    """Fuse ranked lists of (id, score): each id scores sum(1 / (rrf_k + rank)), rank from 1."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, (cid, _) in enumerate(ranking, start=1):
            fused[cid] = fused.get(cid, 0.0) + 1.0 / (rrf_k + rank)
    return sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
