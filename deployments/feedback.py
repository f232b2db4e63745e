"""Analysts' labels on analysed media, kept durably beside the jobs store to learn from (issue: the learning loop).

One SQLite file and a folder of media, both private (0700 folder, 0600 files), under
`<jobs_dir>/feedback`. An item is the label (real/fake), an optional manipulation family and note,
what the service answered then (verdict, probability, model versions), who said it (the key's
name) and, when the media was still at hand, the media itself, stored once per content
(`media/<sha256>`). Retention: items and media stay until deleted (`DELETE /v1/feedback/{id}`, or
the `spectrashield feedback` command); media is refused past `max_bytes` in all (507), the label is
still kept. Nothing here imports Ray: `spectrashield feedback export` reads the same files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

LABELS = ("real", "fake")
FAMILY = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
MAX_NOTE_CHARS = 2000


class FeedbackError(ValueError):
    """A feedback item refused: HTTP status and detail."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail

    def __reduce__(self):  # crosses from the JobQueue to the ingress as a value
        return FeedbackError, (self.status, self.detail)


def private_dir(path: Path) -> Path:
    """`path` as a directory only this user can enter (0700), created if missing; refuses a symlink or a
    directory owned by another user (a predictable path in a shared temp dir could be planted)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.is_symlink() or not path.is_dir():
        raise ValueError(f"{path} is not a plain directory")
    if path.stat().st_uid != os.geteuid():
        raise ValueError(f"{path} belongs to another user")
    path.chmod(0o700)
    return path


def check_label(label: str, family: str | None, note: str | None) -> None:
    if label not in LABELS:
        raise FeedbackError(400, f"label must be one of {', '.join(LABELS)}")
    if family is not None and not FAMILY.match(family):
        raise FeedbackError(400, "family: 1-64 characters of a-z, 0-9, '_', '.', '-'")
    if family is not None and label == "real":
        raise FeedbackError(400, "a family names a manipulation: only for label fake")
    if note is not None and len(note) > MAX_NOTE_CHARS:
        raise FeedbackError(400, f"note: at most {MAX_NOTE_CHARS} characters")


class FeedbackStore:
    COLUMNS = ("id", "created", "label", "family", "note", "job_id", "file_index", "request_id", "filename",
               "sha256", "nbytes", "verdict", "fake_probability", "models", "key_name")

    def __init__(self, root: Path, max_bytes: int = 2 << 30) -> None:
        self.root, self.max_bytes = private_dir(Path(root)), max_bytes
        private_dir(self.root / "media")
        self._lock = threading.Lock()
        path = self.root / "feedback.sqlite3"
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS feedback (id TEXT PRIMARY KEY, created REAL, label TEXT, family TEXT, note TEXT, "
            "job_id TEXT, file_index INTEGER, request_id TEXT, filename TEXT, sha256 TEXT, nbytes INTEGER, "
            "verdict TEXT, fake_probability REAL, models TEXT, key_name TEXT)"
        )

    def media_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.root / "media").iterdir() if not p.name.startswith("."))

    def _keep_media(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self.root / "media" / digest
        if not path.exists():
            if self.media_bytes() + len(data) > self.max_bytes:
                raise FeedbackError(507, f"the feedback store holds its limit of {self.max_bytes} bytes of media")
            partial = path.with_name(f".{digest}.part")
            partial.write_bytes(data)
            os.chmod(partial, 0o600)
            partial.rename(path)
        return digest

    def add(
        self, *, label: str, family: str | None = None, note: str | None = None, data: bytes | None = None,
        filename: str | None = None, result: dict | None = None, job_id: str | None = None,
        file_index: int | None = None, request_id: str | None = None, key_name: str | None = None,
        now: float | None = None,
    ) -> dict[str, Any]:
        """Keep one labelled item (and its media, once per content); returns it as `items` lists it."""
        check_label(label, family, note)
        result = result or {}
        with self._lock:
            digest = self._keep_media(data) if data else None
            row = {
                "id": uuid.uuid4().hex, "created": time.time() if now is None else now, "label": label,
                "family": family, "note": note, "job_id": job_id, "file_index": file_index,
                "request_id": request_id or result.get("request_id"), "filename": filename or result.get("filename"),
                "sha256": digest, "nbytes": len(data) if data else None, "verdict": result.get("verdict"),
                "fake_probability": result.get("fake_probability"),
                "models": json.dumps({d: m.get("version") for d, m in (result.get("models") or {}).items()}),
                "key_name": key_name,
            }
            self._db.execute(f"INSERT INTO feedback VALUES ({', '.join('?' * len(self.COLUMNS))})",
                             tuple(row[c] for c in self.COLUMNS))
        return self._public(row)

    def _public(self, row: dict[str, Any]) -> dict[str, Any]:
        return {**row, "models": json.loads(row["models"] or "{}"), "kept_media": row["sha256"] is not None}

    def items(self, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Newest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join(self.COLUMNS)} FROM feedback ORDER BY created DESC LIMIT ? OFFSET ?",
                (int(limit), int(offset)),
            ).fetchall()
        return [self._public(dict(zip(self.COLUMNS, r))) for r in rows]

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]

    def media_path(self, item: dict[str, Any]) -> Path | None:
        return self.root / "media" / item["sha256"] if item.get("sha256") else None

    def delete(self, item_id: str) -> bool:
        """Delete an item, and its media when no other item holds the same content."""
        with self._lock:
            row = self._db.execute("SELECT sha256 FROM feedback WHERE id=?", (item_id,)).fetchone()
            if row is None:
                return False
            self._db.execute("DELETE FROM feedback WHERE id=?", (item_id,))
            if row[0] and not self._db.execute("SELECT 1 FROM feedback WHERE sha256=?", (row[0],)).fetchone():
                (self.root / "media" / row[0]).unlink(missing_ok=True)
        return True
