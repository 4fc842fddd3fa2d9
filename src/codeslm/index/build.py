"""Building and incrementally updating an index directory from a repository.

A run walks the repository, re-chunks and re-embeds only files whose content hash changed,
drops deleted files, and commits a new generation of data files by replacing the manifest.
Killing it at any point leaves the previous generation readable; embeddings computed before the
kill are cached, so the next run picks up where this one stopped.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from codeslm.chunking import CHUNKER_VERSION, Chunk, chunk_file_text, language_for
from codeslm.errors import CodeslmError, IndexFormatError
from codeslm.index.bm25 import BM25Index, Vocabulary
from codeslm.index.manifest import (
    FORMAT_VERSION,
    KNN_DIR,
    Manifest,
    is_index_dir,
    read_manifest,
    write_manifest,
)
from codeslm.index.store import TEACHER_KIND, FileRecord, MetadataStore, bm25_text
from codeslm.index.tokenize import code_tokens
from codeslm.index.walk import DEFAULT_MAX_FILE_SIZE, UnusableFile, read_source, walk_repo

EMBED_CACHE = "embeddings-cache.sqlite"
_GENERATION_FILE = re.compile(r"^(meta-\d+\.sqlite(-journal)?|bm25-\d+(\.tmp)?|vocab-\d+\.json|dense-\d+\.faiss|\.manifest-.*)$")


@dataclass
class IndexSummary:
    index_dir: Path
    repo: Path
    files: int = 0
    chunks: int = 0
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    parse_fallbacks: int = 0
    embedded: int = 0
    skipped: Counter = field(default_factory=Counter)
    dense: bool = True
    up_to_date: bool = False
    knn_dropped: bool = False  # a kNN datastore of the code before this run was removed
    teacher_items: int = 0  # teacher-written chunks (`codeslm transfer`) the index holds
    teacher_dropped: int = 0  # of those, dropped with their changed or deleted files
    seconds: float = 0.0


def default_index_dir(repo: Path) -> Path:
    return Path("index") / repo.resolve().name


def build_index(
    repo: str | Path,
    index_dir: str | Path | None = None,
    *,
    dense: bool = True,
    embedding_model: str | None = None,
    max_file_size: int = DEFAULT_MAX_FILE_SIZE,
    rebuild: bool = False,
    progress: bool = True,
) -> IndexSummary:
    """Index `repo` into `index_dir` (default `index/<repo-name>/`), updating it if it exists."""
    started = time.perf_counter()
    repo = Path(repo).expanduser()
    if not repo.exists():
        raise CodeslmError(f"{repo} does not exist")
    if not repo.is_dir():
        raise CodeslmError(f"{repo} is a file, not a repository directory")
    repo = repo.resolve()
    index_dir = Path(index_dir) if index_dir is not None else default_index_dir(repo)
    if index_dir.exists() and not index_dir.is_dir():
        raise IndexFormatError(f"{index_dir} is a file, not an index directory")
    if index_dir.is_dir() and not is_index_dir(index_dir) and not _only_index_files(index_dir):
        raise IndexFormatError(
            f"{index_dir} exists and is not a codeslm index; choose another --index-dir"
        )
    index_dir.mkdir(parents=True, exist_ok=True)

    with _lock(index_dir):
        current = _existing(index_dir, rebuild)
        old = None if rebuild else current
        if old is not None and Path(old.repo) != repo:
            raise IndexFormatError(
                f"{index_dir} indexes {old.repo}, not {repo}; use --rebuild or another --index-dir"
            )
        # The current generation stays until the new manifest replaces it, even on --rebuild.
        _remove_stale_files(index_dir, current)
        summary = IndexSummary(index_dir=index_dir, repo=repo, dense=dense)
        _update(repo, index_dir, old, summary, dense, embedding_model, max_file_size, progress)
        if not summary.up_to_date and (index_dir / KNN_DIR).is_dir():
            # Its entries name files and lines of the code before this run: stale ones could
            # show a completion the text after its cursor.
            shutil.rmtree(index_dir / KNN_DIR)
            summary.knn_dropped = True
    summary.seconds = time.perf_counter() - started
    return summary


def _only_index_files(index_dir: Path) -> bool:
    """True for an empty directory or one a first run left before it committed anything."""
    return all(
        e.name in (".lock", EMBED_CACHE) or _GENERATION_FILE.match(e.name)
        for e in index_dir.iterdir()
    )


def _existing(index_dir: Path, rebuild: bool) -> Manifest | None:
    """The current manifest; on --rebuild an unreadable one counts as none."""
    if not is_index_dir(index_dir):
        return None
    try:
        return read_manifest(index_dir)
    except IndexFormatError:
        if rebuild:
            return None
        raise


class _lock:
    """An exclusive lock on the index directory, so two writers never interleave."""

    def __init__(self, index_dir: Path):
        self.path = index_dir / ".lock"

    def __enter__(self):
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            os.close(self.fd)
            raise IndexFormatError(f"{self.path.parent} is being written by another process") from e

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _remove_stale_files(index_dir: Path, current: Manifest | None) -> None:
    """Delete data files no manifest points to: leftovers of an interrupted or replaced run."""
    keep = set()
    if current is not None:
        keep = {current.file(k) for k in ("meta", "bm25", "vocab", "dense")}
    for entry in index_dir.iterdir():
        if _GENERATION_FILE.match(entry.name) and entry.name not in keep:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink(missing_ok=True)


def _next_generation(index_dir: Path, old: Manifest | None) -> int:
    numbers = [
        int(re.search(r"\d+", e.name).group())
        for e in index_dir.iterdir()
        if _GENERATION_FILE.match(e.name) and re.search(r"\d+", e.name)
    ]
    return max([old.generation if old else 0, *numbers]) + 1


def _update(repo, index_dir, old, summary, dense, embedding_model, max_file_size, progress):
    from codeslm.index.dense import DenseIndex, Embedder

    embedder = Embedder(embedding_model) if dense else None
    rechunk_all = old is None or old.chunker_version != CHUNKER_VERSION
    reembed_all = dense and (
        old is None or not old.dense or old.embedding_model != embedder.name or rechunk_all
    )
    old_store = (
        None if old is None else MetadataStore.open(index_dir / old.file("meta"), readonly=False)
    )
    old_files = {} if old_store is None else old_store.files()

    files, skipped = walk_repo(repo, max_file_size)
    summary.skipped = skipped
    todo: list[tuple[FileRecord, str]] = []
    seen = set()
    for f in tqdm(files, desc="reading", unit="file", disable=not progress, leave=False):
        prev = old_files.get(f.path)
        if prev and not rechunk_all and (prev.size, prev.mtime_ns) == (f.size, f.mtime_ns):
            seen.add(f.path)
            summary.unchanged += 1
            continue
        try:
            data, text = read_source(f)
        except UnusableFile as e:
            skipped[str(e)] += 1
            continue
        seen.add(f.path)
        sha = hashlib.blake2b(data, digest_size=16).hexdigest()
        if prev and not rechunk_all and prev.sha == sha:
            old_store.touch_file(f.path, f.size, f.mtime_ns)
            summary.unchanged += 1
            continue
        record = FileRecord(f.path, sha, f.size, f.mtime_ns, language_for(f.path), False)
        todo.append((record, text))
    removed = [p for p in old_files if p not in seen]
    config_changed = old is not None and (old.dense != dense or reembed_all)

    if old_store is not None:
        old_store.commit()
    if old is not None and not todo and not removed and not config_changed:
        summary.files, summary.chunks = old_store.counts()
        summary.up_to_date = True
        old_store.close()
        return

    generation = _next_generation(index_dir, old)
    names = Manifest(FORMAT_VERSION, CHUNKER_VERSION, generation, str(repo), dense, None, None, 0, 0)
    store = MetadataStore.copy(
        None if (old is None or rechunk_all) else old_store.path, index_dir / names.file("meta")
    )
    if old_store is not None:
        old_store.close()
    vocab = Vocabulary(_load_vocab(index_dir / old.file("vocab")) if old and not rechunk_all else [])

    teacher_before = len(store.ids_of_kind(TEACHER_KIND))
    dropped = [store.remove_file(p) for p in removed]
    added_ids = []
    for record, text in tqdm(todo, desc="chunking", unit="file", disable=not progress, leave=False):
        if record.path in old_files and not rechunk_all:
            dropped.append(store.remove_file(record.path))
            summary.changed += 1
        else:
            summary.added += 1
        chunks, parse_error = chunk_file_text(record.path, text)
        summary.parse_fallbacks += parse_error
        record = FileRecord(record.path, record.sha, record.size, record.mtime_ns,
                            record.language, parse_error)
        token_ids = [vocab.encode(code_tokens(bm25_text(c))) for c in chunks]
        added_ids.append(store.add_file(record, chunks, token_ids))
    store.commit()
    summary.removed = len(removed)
    summary.files, summary.chunks = store.counts()
    summary.teacher_items = len(store.ids_of_kind(TEACHER_KIND))
    summary.teacher_dropped = teacher_before - summary.teacher_items

    _write_bm25(index_dir, names, store, vocab)
    if dense:
        if reembed_all:
            base, new_ids, gone = DenseIndex.empty(embedder.dim), store.token_ids()[0], None
        else:
            base = DenseIndex.load(index_dir / old.file("dense"))
            new_ids = np.concatenate(added_ids) if added_ids else np.zeros(0, np.int64)
            gone = np.concatenate(dropped) if dropped else None
        summary.embedded = _update_dense(index_dir, names, store, embedder, base, gone, new_ids,
                                         progress)
    store.close()

    now = time.time()
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        chunker_version=CHUNKER_VERSION,
        generation=generation,
        repo=str(repo),
        dense=dense,
        embedding_model=embedder.name if dense else None,
        embedding_dim=embedder.dim if dense else None,
        created=old.created if old else now,
        updated=now,
        stats={"files": summary.files, "chunks": summary.chunks,
               "skipped": dict(summary.skipped), "parse_fallbacks": summary.parse_fallbacks,
               **({"teacher_items": summary.teacher_items, "teacher": old.stats.get("teacher")}
                  if old is not None and summary.teacher_items else {})},
    )
    write_manifest(index_dir, manifest)
    _remove_stale_files(index_dir, manifest)


def _write_bm25(index_dir: Path, names: Manifest, store: MetadataStore, vocab: Vocabulary) -> None:
    """The BM25 index of every chunk in `store` and its vocabulary, as generation `names`'s files."""
    ids, token_ids = store.token_ids()
    bm25_dir = index_dir / names.file("bm25")
    bm25_dir.mkdir()
    BM25Index.from_ids(token_ids, vocab).save(bm25_dir)
    np.save(bm25_dir / "ids.npy", ids)
    (index_dir / names.file("vocab")).write_text(json.dumps(vocab.tokens), encoding="utf-8")


def _update_dense(index_dir, names, store, embedder, base, gone, new_ids, progress) -> int:
    """Write `base` less the `gone` ids plus embeddings of the `new_ids` chunks as generation
    `names`'s dense index; returns how many chunks were embedded (cached ones cost nothing)."""
    from codeslm.index.dense import EmbeddingCache, embed_with_cache

    cache = EmbeddingCache(index_dir / EMBED_CACHE, embedder.name)
    try:
        if gone is not None:
            base.remove(gone)
        texts = store.chunk_texts(new_ids)
        with tqdm(total=len(texts), desc="embedding", unit="chunk",
                  disable=not progress or not texts, leave=False) as bar:
            vectors = embed_with_cache(embedder, cache, texts, bar.update)
        base.add(new_ids, vectors)
        base.save(index_dir / names.file("dense"))
    finally:
        cache.close()
    return len(texts)


@dataclass
class ItemsSummary:
    index_dir: Path
    items: int = 0  # teacher items the index holds now
    replaced: int = 0  # teacher items it held before
    embedded: int = 0
    upgraded: bool = False  # the index was written before teacher items existed


def write_teacher_items(index_dir: str | Path, items: list[tuple[Chunk, dict]], teacher: dict,
                        progress: bool = True) -> ItemsSummary:
    """Replace the index's teacher items by `items` (`(chunk, provenance)`) as a new generation.

    The repository's own chunks are kept as they are (and so is its kNN datastore); unchanged
    items embed from the cache. An index written before teacher items existed is upgraded.
    """
    from codeslm.index.dense import DenseIndex, Embedder

    index_dir = Path(index_dir)
    with _lock(index_dir):
        old = read_manifest(index_dir)
        old_meta = index_dir / old.file("meta")
        before = MetadataStore.open(old_meta)
        summary = ItemsSummary(index_dir, upgraded=not before.has_teacher_items_table())
        before.close()
        _remove_stale_files(index_dir, old)
        names = replace(old, generation=_next_generation(index_dir, old))
        store = MetadataStore.copy(old_meta, index_dir / names.file("meta"))
        gone = store.remove_teacher_items()
        summary.replaced = len(gone)
        vocab = Vocabulary(_load_vocab(index_dir / old.file("vocab")))
        token_ids = [vocab.encode(code_tokens(bm25_text(c))) for c, _ in items]
        new_ids = store.add_teacher_items(items, token_ids)
        store.commit()
        summary.items = len(new_ids)
        files, chunks = store.counts()
        _write_bm25(index_dir, names, store, vocab)
        if old.dense:
            base = DenseIndex.load(index_dir / old.file("dense"))
            summary.embedded = _update_dense(index_dir, names, store, Embedder(old.embedding_model),
                                             base, gone, new_ids, progress)
        store.close()
        manifest = replace(names, updated=time.time(),
                           stats={**old.stats, "files": files, "chunks": chunks,
                                  "teacher_items": len(new_ids), "teacher": teacher})
        write_manifest(index_dir, manifest)
        _remove_stale_files(index_dir, manifest)
    return summary


def _load_vocab(path: Path) -> list[str]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise IndexFormatError(f"{path} is corrupt ({e}); rebuild with --rebuild") from e
