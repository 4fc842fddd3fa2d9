"""The metadata store of an index: files with content hashes, and chunks with their text.

One SQLite file per index generation; an update copies the current one and edits the copy, so
the current generation is never written to (except `touch_file`, a stat cache hint).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codeslm.chunking import Chunk
from codeslm.errors import IndexFormatError

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, sha TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    language TEXT NOT NULL, parse_error INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL, language TEXT NOT NULL,
    kind TEXT NOT NULL, symbol TEXT NOT NULL, start_line INTEGER NOT NULL,
    end_line INTEGER NOT NULL, text TEXT NOT NULL, token_ids BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_path ON chunks(path);
CREATE TABLE IF NOT EXISTS teacher_items (
    chunk_id INTEGER PRIMARY KEY, provenance TEXT NOT NULL
);
"""
TEACHER_KIND = "teacher"  # chunks a teacher model wrote (`codeslm.transfer`), not repository text
_CHUNK_COLUMNS = "id, path, language, kind, symbol, start_line, end_line, text"


@dataclass(frozen=True)
class FileRecord:
    path: str
    sha: str
    size: int
    mtime_ns: int
    language: str
    parse_error: bool


class MetadataStore:
    def __init__(self, db: sqlite3.Connection, path: Path):
        self.db = db
        self.path = path

    @classmethod
    def open(cls, path: Path, readonly: bool = True) -> MetadataStore:
        if readonly and not path.is_file():
            raise IndexFormatError(f"metadata store {path} is missing; rebuild the index")
        try:
            uri = f"file:{path}?mode={'ro' if readonly else 'rwc'}"
            db = sqlite3.connect(uri, uri=True, check_same_thread=False)
            if not readonly:
                db.executescript(SCHEMA)
            db.execute("SELECT count(*) FROM chunks").fetchone()
        except sqlite3.DatabaseError as e:
            raise IndexFormatError(
                f"metadata store {path} is corrupt ({e}); rebuild with `codeslm index REPO --rebuild`"
            ) from e
        return cls(db, path)

    @classmethod
    def copy(cls, source: Path | None, dest: Path) -> MetadataStore:
        """A writable copy of the store at `source` (or an empty store) at `dest`."""
        dest.unlink(missing_ok=True)
        if source is not None:
            shutil.copyfile(source, dest)
        return cls.open(dest, readonly=False)

    def close(self) -> None:
        self.db.close()

    def files(self) -> dict[str, FileRecord]:
        rows = self.db.execute("SELECT path, sha, size, mtime_ns, language, parse_error FROM files")
        return {r[0]: FileRecord(r[0], r[1], r[2], r[3], r[4], bool(r[5])) for r in rows}

    def touch_file(self, path: str, size: int, mtime_ns: int) -> None:
        self.db.execute("UPDATE files SET size = ?, mtime_ns = ? WHERE path = ?", (size, mtime_ns, path))

    def remove_file(self, path: str) -> np.ndarray:
        """Drop a file and its chunks; returns the ids of the chunks dropped."""
        ids = np.array(
            [r[0] for r in self.db.execute("SELECT id FROM chunks WHERE path = ?", (path,))],
            dtype=np.int64,
        )
        self.db.execute("DELETE FROM chunks WHERE path = ?", (path,))
        self.db.execute("DELETE FROM files WHERE path = ?", (path,))
        self._forget_items(ids)
        return ids

    def _forget_items(self, ids: np.ndarray) -> None:
        if len(ids) and self.has_teacher_items_table():
            self.db.executemany("DELETE FROM teacher_items WHERE chunk_id = ?", [(int(i),) for i in ids])

    def has_teacher_items_table(self) -> bool:
        """False for an index written before teacher items existed (its copies gain the table)."""
        row = self.db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'teacher_items'").fetchone()
        return row is not None

    def remove_teacher_items(self) -> np.ndarray:
        """Drop every teacher-written chunk; returns their ids."""
        ids = self.ids_of_kind(TEACHER_KIND)
        self.db.execute("DELETE FROM chunks WHERE kind = ?", (TEACHER_KIND,))
        self._forget_items(ids)
        return ids

    def add_teacher_items(self, items: list[tuple[Chunk, dict]], token_ids: list[np.ndarray]) -> np.ndarray:
        """Store teacher-written chunks (kind `teacher`) with their provenance; returns their ids."""
        ids = []
        for (chunk, provenance), tokens in zip(items, token_ids, strict=True):
            if chunk.kind != TEACHER_KIND:
                raise ValueError(f"a teacher item must have kind {TEACHER_KIND!r}, not {chunk.kind!r}")
            cur = self.db.execute(
                "INSERT INTO chunks (path, language, kind, symbol, start_line, end_line, text,"
                " token_ids) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (chunk.path, chunk.language, chunk.kind, chunk.symbol, chunk.start_line,
                 chunk.end_line, chunk.text, tokens.astype(np.int32).tobytes()),
            )
            self.db.execute("INSERT INTO teacher_items VALUES (?, ?)",
                            (cur.lastrowid, json.dumps(provenance, sort_keys=True)))
            ids.append(cur.lastrowid)
        return np.array(ids, dtype=np.int64)

    def ids_of_kind(self, kind: str) -> np.ndarray:
        rows = self.db.execute("SELECT id FROM chunks WHERE kind = ? ORDER BY id", (kind,))
        return np.array([r[0] for r in rows], dtype=np.int64)

    def provenance(self, ids) -> dict[int, dict]:
        """The provenance of teacher items among `ids`."""
        if not self.has_teacher_items_table():
            return {}
        found = {}
        for i in range(0, len(ids), 500):
            part = [int(x) for x in ids[i : i + 500]]
            marks = ",".join("?" * len(part))
            for cid, text in self.db.execute(
                f"SELECT chunk_id, provenance FROM teacher_items WHERE chunk_id IN ({marks})", part
            ):
                found[cid] = json.loads(text)
        return found

    def add_file(self, record: FileRecord, chunks: list[Chunk], token_ids: list[np.ndarray]) -> np.ndarray:
        """Store a file and its chunks; returns the new chunk ids."""
        self.db.execute(
            "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)",
            (record.path, record.sha, record.size, record.mtime_ns, record.language,
             int(record.parse_error)),
        )
        ids = []
        for chunk, tokens in zip(chunks, token_ids, strict=True):
            cur = self.db.execute(
                "INSERT INTO chunks (path, language, kind, symbol, start_line, end_line, text,"
                " token_ids) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (chunk.path, chunk.language, chunk.kind, chunk.symbol, chunk.start_line,
                 chunk.end_line, chunk.text, tokens.astype(np.int32).tobytes()),
            )
            ids.append(cur.lastrowid)
        return np.array(ids, dtype=np.int64)

    def commit(self) -> None:
        self.db.commit()

    def token_ids(self) -> tuple[np.ndarray, list[np.ndarray]]:
        """All chunk ids in ascending order and each chunk's BM25 token ids."""
        ids, tokens = [], []
        for cid, blob in self.db.execute("SELECT id, token_ids FROM chunks ORDER BY id"):
            ids.append(cid)
            tokens.append(np.frombuffer(blob, dtype=np.int32))
        return np.array(ids, dtype=np.int64), tokens

    def chunks(self, ids: list[int]) -> dict[int, Chunk]:
        found = {}
        for i in range(0, len(ids), 500):
            part = [int(x) for x in ids[i : i + 500]]
            marks = ",".join("?" * len(part))
            for row in self.db.execute(
                f"SELECT {_CHUNK_COLUMNS} FROM chunks WHERE id IN ({marks})", part
            ):
                found[row[0]] = Chunk(*row[1:])
        return found

    def chunk_texts(self, ids: np.ndarray) -> list[str]:
        by_id = self.chunks(list(ids))
        return [embedding_text(by_id[int(i)]) for i in ids]

    def ids_at_or_after(self, path: str, line: int) -> list[int]:
        """Chunks of `path` that hold line `line` or start after it."""
        rows = self.db.execute("SELECT id FROM chunks WHERE path = ? AND end_line >= ?", (path, line))
        return [r[0] for r in rows]

    def ids_of_files(self, paths) -> list[int]:
        ids = []
        for path in paths:
            ids += [r[0] for r in self.db.execute("SELECT id FROM chunks WHERE path = ?", (path,))]
        return ids

    def counts(self) -> tuple[int, int]:
        files = self.db.execute("SELECT count(*) FROM files").fetchone()[0]
        chunks = self.db.execute("SELECT count(*) FROM chunks").fetchone()[0]
        return files, chunks


def embedding_text(chunk: Chunk) -> str:
    """What the dense model sees of a chunk: its path, its symbol, then its text."""
    head = f"{chunk.path} {chunk.symbol}".strip()
    return f"{head}\n{chunk.text}"


def bm25_text(chunk: Chunk) -> str:
    """What BM25 indexes of a chunk: path and symbol words count as part of it."""
    return f"{chunk.path} {chunk.symbol}\n{chunk.text}"
