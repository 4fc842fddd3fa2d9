"""What the teacher wrote, kept per request, so a re-run only asks about units that changed.

One SQLite file in the index directory, committed after every request: a killed run loses at
most the request it was in. A key covers everything the answer depends on (teacher weights,
template, the unit's text, the target, sampling), so a stale answer is never reused.
But: it does not decide what goes into the index (see `codeslm.transfer.run`).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

CACHE_FILE = "teacher-cache.sqlite"


def request_key(teacher_sha: str, template: str, unit_sha: str, target: str, sampling: dict) -> str:
    text = json.dumps([teacher_sha, template, unit_sha, target, sampling], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


class TeacherCache:
    def __init__(self, index_dir: Path):
        self.path = Path(index_dir) / CACHE_FILE
        self.db = sqlite3.connect(self.path)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, answer TEXT NOT NULL, "
            "seconds REAL NOT NULL, created REAL NOT NULL)"
        )
        self.db.commit()

    def get(self, key: str) -> dict | None:
        row = self.db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, answer: dict, seconds: float) -> None:
        self.db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?)",
                        (key, json.dumps(answer, sort_keys=True), seconds, time.time()))
        self.db.commit()

    def close(self) -> None:
        self.db.close()
