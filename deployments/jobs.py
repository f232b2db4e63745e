"""Asynchronous analysis jobs: a durable queue in SQLite, worked by the ingress replicas.

`JobStore` is plain Python (tested without Ray). `JobQueueDeployment` is one Serve replica that
owns the store, so every ingress replica on any node sees the same jobs. Workers claim one file at
a time under a lease they renew with heartbeats; a lease that runs out (its worker died) puts the
file back in the queue, and after `max_attempts` the job fails with that reason: a job always
ends `done` or `failed`, never silently lost.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from deployments.feedback import FeedbackError, FeedbackStore, private_dir

STAGES = ("queued", "decoding", "triage", "keyframes", "branches", "fusion", "done")


class JobsConfig(BaseModel):
    """user_config of JobQueue."""

    model_config = ConfigDict(extra="forbid")

    jobs_dir: str | None = Field(
        None, description="where state and uploads live, made private (0700); default: <system temp>/spectrashield-jobs-<uid>"
    )
    result_ttl_s: float = Field(24 * 3600, gt=0, description="finished jobs are deleted this long after they end")
    lease_s: float = Field(60.0, gt=0, description="a claimed file returns to the queue after this long without a heartbeat")
    max_attempts: int = Field(3, ge=1)
    keep_uploads: bool = Field(
        True, description="a finished job's uploads stay as long as its results (result_ttl_s), so an analyst's "
        "feedback can keep the media; false: deleted as each job ends (feedback then keeps the label only)",
    )
    feedback_max_bytes: int = Field(2 << 30, ge=0, description="media the feedback store keeps in all (then 507)")


@dataclass
class Claim:
    job_id: str
    index: int
    filename: str
    data: bytes
    attempt: int
    n_files: int


class UnknownJobError(KeyError):
    pass


def uuid_like(job_id: str) -> bool:
    """Job ids are uuid4 hex: anything else never reaches a path."""
    return len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id)


class JobStore:
    """Jobs, their files and leases in one SQLite database; uploads as files beside it."""

    def __init__(
        self, root: Path, *, result_ttl_s: float, lease_s: float, max_attempts: int, keep_uploads: bool = True,
    ) -> None:
        self.root = private_dir(Path(root))
        self.keep_uploads = keep_uploads
        private_dir(self.root / "uploads")
        private_dir(self.root / "thumbnails")  # keyframe JPEGs of finished files, kept as long as the results
        self.result_ttl_s, self.lease_s, self.max_attempts = result_ttl_s, lease_s, max_attempts
        self._lock = threading.Lock()
        db_path = self.root / "jobs.sqlite3"
        db_path.touch(mode=0o600, exist_ok=True)
        db_path.chmod(0o600)
        self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS jobs (
                id TEXT PRIMARY KEY, created REAL, updated REAL, finished REAL, error TEXT
            );
            CREATE TABLE IF NOT EXISTS files (
                job_id TEXT, idx INTEGER, filename TEXT, status TEXT, stage TEXT, stage_percent REAL,
                attempts INTEGER, worker TEXT, lease_until REAL, result TEXT, error TEXT,
                PRIMARY KEY (job_id, idx)
            );
            """
        )
        self.sweep_orphans()

    def sweep_orphans(self) -> int:
        """Delete upload folders without a job row (a submit cut short by a crash); returns how many."""
        known = {r[0] for r in self._db.execute("SELECT id FROM jobs")}
        orphans = [p for d in ("uploads", "thumbnails") for p in (self.root / d).iterdir() if p.name not in known]
        for path in orphans:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        return len(orphans)

    def _upload(self, job_id: str, index: int) -> Path:
        return self.root / "uploads" / job_id / str(index)

    def submit(self, files: list[tuple[str | None, bytes]]) -> str:
        if not files:
            raise ValueError("a job needs at least one file")
        job_id, now = uuid.uuid4().hex, time.time()
        # Written aside, moved into place inside the transaction that adds the rows: a crash leaves either
        # both or an upload folder without rows, which `sweep_orphans` deletes at the next start.
        partial = self.root / "uploads" / f".{job_id}.part"
        partial.mkdir(mode=0o700)
        for i, (_, data) in enumerate(files):
            (partial / str(i)).write_bytes(data)
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.execute("INSERT INTO jobs VALUES (?, ?, ?, NULL, NULL)", (job_id, now, now))
                self._db.executemany(
                    "INSERT INTO files VALUES (?, ?, ?, 'queued', 'queued', 0, 0, NULL, NULL, NULL, NULL)",
                    [(job_id, i, name) for i, (name, _) in enumerate(files)],
                )
                partial.rename(self.root / "uploads" / job_id)
            except BaseException:
                self._db.execute("ROLLBACK")
                shutil.rmtree(partial, ignore_errors=True)
                raise
            self._db.execute("COMMIT")
        return job_id

    def _expire_leases(self, now: float) -> None:
        """Files whose worker stopped heartbeating: back to the queue, or failed after max_attempts."""
        stale = self._db.execute(
            "SELECT job_id, idx, attempts FROM files WHERE status = 'running' AND lease_until < ?", (now,)
        ).fetchall()
        for job_id, idx, attempts in stale:
            if attempts >= self.max_attempts:
                self._db.execute(
                    "UPDATE files SET status='failed', stage='done', stage_percent=100, worker=NULL, error=? "
                    "WHERE job_id=? AND idx=?",
                    (json.dumps({"error": "worker_lost", "detail": f"worker lost {attempts} times (no heartbeat for "
                                 f"{self.lease_s:g} s); giving up"}), job_id, idx),
                )
                self._finish_if_complete(job_id, now)
            else:
                self._db.execute(
                    "UPDATE files SET status='queued', stage='queued', stage_percent=0, worker=NULL "
                    "WHERE job_id=? AND idx=?",
                    (job_id, idx),
                )

    def _purge(self, now: float) -> None:
        old = [r[0] for r in self._db.execute(
            "SELECT id FROM jobs WHERE finished IS NOT NULL AND finished < ?", (now - self.result_ttl_s,)
        )]
        for job_id in old:
            self._db.execute("DELETE FROM files WHERE job_id = ?", (job_id,))
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            shutil.rmtree(self.root / "uploads" / job_id, ignore_errors=True)
            shutil.rmtree(self.root / "thumbnails" / job_id, ignore_errors=True)

    def maintain(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._lock:
            self._db.execute("BEGIN")
            self._expire_leases(now)
            self._purge(now)
            self._db.execute("COMMIT")

    def claim(self, worker: str, now: float | None = None) -> Claim | None:
        now = time.time() if now is None else now
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._expire_leases(now)
            row = self._db.execute(
                "SELECT f.job_id, f.idx, f.filename, f.attempts FROM files f JOIN jobs j ON j.id = f.job_id "
                "WHERE f.status = 'queued' ORDER BY j.created, f.idx LIMIT 1"
            ).fetchone()
            if row is None:
                self._db.execute("COMMIT")
                return None
            job_id, idx, filename, attempts = row
            self._db.execute(
                "UPDATE files SET status='running', stage='decoding', attempts=?, worker=?, lease_until=? "
                "WHERE job_id=? AND idx=?",
                (attempts + 1, worker, now + self.lease_s, job_id, idx),
            )
            self._db.execute("UPDATE jobs SET updated=? WHERE id=?", (now, job_id))
            n_files = self._db.execute("SELECT COUNT(*) FROM files WHERE job_id=?", (job_id,)).fetchone()[0]
            self._db.execute("COMMIT")
        return Claim(job_id, idx, filename, self._upload(job_id, idx).read_bytes(), attempts + 1, n_files)

    def progress(self, job_id: str, index: int, worker: str, stage: str, now: float | None = None) -> bool:
        """Record a stage and renew the lease; False when the lease was lost (another worker owns the file)."""
        now = time.time() if now is None else now
        percent = 100.0 * STAGES.index(stage) / (len(STAGES) - 1)
        with self._lock:
            cur = self._db.execute(
                "UPDATE files SET stage=?, stage_percent=?, lease_until=? WHERE job_id=? AND idx=? AND worker=? "
                "AND status='running'",
                (stage, percent, now + self.lease_s, job_id, index, worker),
            )
            self._db.execute("UPDATE jobs SET updated=? WHERE id=?", (now, job_id))
            return cur.rowcount == 1

    def complete(
        self, job_id: str, index: int, worker: str, *, result: dict | None = None, error: dict | None = None,
        now: float | None = None,
    ) -> bool:
        now = time.time() if now is None else now
        with self._lock:
            self._db.execute("BEGIN")
            cur = self._db.execute(
                "UPDATE files SET status=?, stage='done', stage_percent=100, worker=NULL, result=?, error=? "
                "WHERE job_id=? AND idx=? AND worker=? AND status='running'",
                ("done" if error is None else "failed", json.dumps(result) if result is not None else None,
                 json.dumps(error) if error is not None else None, job_id, index, worker),
            )
            self._finish_if_complete(job_id, now)
            self._db.execute("COMMIT")
            return cur.rowcount == 1

    def keep_thumbnails(
        self, job_id: str, index: int, jpegs: list[bytes], crops: list[np.ndarray | None] | None = None,
    ) -> None:
        """A finished file's keyframe thumbnails (JPEG) and the face crops the visual branch scored at them
        (None: no face there), deleted with the job's results."""
        folder = self.root / "thumbnails" / job_id
        folder.mkdir(mode=0o700, exist_ok=True)
        named = [(f"{index}-{k}.jpg", jpeg) for k, jpeg in enumerate(jpegs)]
        for k, crop in enumerate(crops or []):
            if crop is not None:
                buffer = io.BytesIO()
                np.save(buffer, np.ascontiguousarray(crop, np.uint8), allow_pickle=False)
                named.append((f"{index}-{k}-face.npy", buffer.getvalue()))
        for name, blob in named:
            partial = folder / f".{name}.part"
            partial.write_bytes(blob)
            partial.rename(folder / name)

    def thumbnail(self, job_id: str, index: int, k: int) -> bytes:
        path = self.root / "thumbnails" / job_id / f"{int(index)}-{int(k)}.jpg"
        if not uuid_like(job_id) or not path.is_file():
            raise UnknownJobError(f"no thumbnail {k} of file {index} in job {job_id}")
        return path.read_bytes()

    def face_crop(self, job_id: str, index: int, k: int) -> tuple[np.ndarray, str | None]:
        """The face crop scored at keyframe k of a finished file, and the visual model version that scored it."""
        path = self.root / "thumbnails" / job_id / f"{int(index)}-{int(k)}-face.npy"
        if not uuid_like(job_id) or not path.is_file():
            raise UnknownJobError(f"no face crop at keyframe {k} of file {index} in job {job_id}")
        with self._lock:
            row = self._db.execute("SELECT result FROM files WHERE job_id=? AND idx=?", (job_id, int(index))).fetchone()
        model = (json.loads(row[0]).get("models") or {}).get("CompressionResilient") if row and row[0] else None
        return np.load(path, allow_pickle=False), (model or {}).get("version")

    def finished_file(self, job_id: str, index: int) -> tuple[str | None, dict, bytes | None]:
        """(filename, result, upload bytes or None once deleted) of a file analysed to the end: what feedback keeps."""
        with self._lock:
            row = self._db.execute(
                "SELECT filename, status, result FROM files WHERE job_id=? AND idx=?", (job_id, int(index))
            ).fetchone() if uuid_like(job_id) else None
        if row is None:
            raise UnknownJobError(f"no file {index} in job {job_id}")
        if row[1] != "done":
            raise FeedbackError(409, f"file {index} of job {job_id} is {row[1]}: only analysed files take feedback")
        path = self._upload(job_id, index)
        return row[0], json.loads(row[2]), path.read_bytes() if path.is_file() else None

    def _finish_if_complete(self, job_id: str, now: float) -> None:
        left = self._db.execute(
            "SELECT COUNT(*) FROM files WHERE job_id=? AND status IN ('queued', 'running')", (job_id,)
        ).fetchone()[0]
        self._db.execute(
            "UPDATE jobs SET updated=?, finished=CASE WHEN ? = 0 THEN ? ELSE finished END WHERE id=?",
            (now, left, now, job_id),
        )
        if left == 0 and not self.keep_uploads:
            shutil.rmtree(self.root / "uploads" / job_id, ignore_errors=True)

    def get(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            job = self._db.execute("SELECT created, updated, finished FROM jobs WHERE id=?", (job_id,)).fetchone()
            if job is None:
                raise UnknownJobError(job_id)
            rows = self._db.execute(
                "SELECT idx, filename, status, stage, stage_percent, attempts, result, error FROM files "
                "WHERE job_id=? ORDER BY idx",
                (job_id,),
            ).fetchall()
        files = [
            {
                "index": idx, "filename": name, "status": status, "stage": stage, "percent": round(pct, 1),
                "attempts": attempts, "result": json.loads(result) if result else None,
                "error": json.loads(error) if error else None,
            }
            for idx, name, status, stage, pct, attempts, result, error in rows
        ]
        statuses = {f["status"] for f in files}
        if statuses <= {"done", "failed"}:
            status = "done" if "done" in statuses else "failed"
        else:
            status = "running" if statuses & {"running", "done", "failed"} else "queued"
        active = next((f for f in files if f["status"] == "running"), None)
        return {
            "id": job_id,
            "status": status,
            "stage": "done" if status in ("done", "failed") else (active["stage"] if active else "queued"),
            "percent": round(sum(f["percent"] for f in files) / len(files), 1),
            "created": job[0], "updated": job[1], "finished": job[2],
            "files": files,
        }


@serve.deployment(name="JobQueue", ray_actor_options={"num_cpus": 0.05})
class JobQueueDeployment:
    """The one place job state lives; keep a single replica (see README: what survives what)."""

    def __init__(self) -> None:
        self.store: JobStore | None = None
        self.reconfigure({})  # the defaults until a user_config says otherwise

    def reconfigure(self, user_config: dict) -> None:
        cfg = JobsConfig.model_validate(user_config or {})
        root = Path(cfg.jobs_dir) if cfg.jobs_dir else Path(tempfile.gettempdir()) / f"spectrashield-jobs-{os.geteuid()}"
        self.store = JobStore(root, result_ttl_s=cfg.result_ttl_s, lease_s=cfg.lease_s, max_attempts=cfg.max_attempts,
                              keep_uploads=cfg.keep_uploads)
        self.store.maintain()
        self.feedback = FeedbackStore(root / "feedback", max_bytes=cfg.feedback_max_bytes)

    def submit(self, files: list[tuple[str | None, bytes]]) -> str:
        return self.store.submit(files)

    def get(self, job_id: str) -> dict[str, Any]:
        return self.store.get(job_id)

    def claim(self, worker: str) -> Claim | None:
        return self.store.claim(worker)

    def progress(self, job_id: str, index: int, worker: str, stage: str) -> bool:
        return self.store.progress(job_id, index, worker, stage)

    def complete(
        self, job_id: str, index: int, worker: str, result: dict | None, error: dict | None,
        thumbnails: list[bytes] | None = None, crops: list[np.ndarray | None] | None = None,
    ) -> bool:
        if thumbnails or crops:
            self.store.keep_thumbnails(job_id, index, thumbnails or [], crops)
        return self.store.complete(job_id, index, worker, result=result, error=error)

    def thumbnail(self, job_id: str, index: int, k: int) -> bytes:
        return self.store.thumbnail(job_id, index, k)

    def face_crop(self, job_id: str, index: int, k: int) -> tuple[np.ndarray, str | None]:
        return self.store.face_crop(job_id, index, k)

    def give_feedback(self, item: dict[str, Any], data: bytes | None = None) -> dict[str, Any] | FeedbackError:
        """Keep an analyst's label: on a job's file (`job_id`, `file_index`: its result and, while kept, its
        upload) or on a synchronous request (`request_id`, with the media re-sent as `data`). A refusal is
        answered as a value (UnknownJobError too, as 404)."""
        try:
            if item.get("job_id") is not None:
                filename, result, upload = self.store.finished_file(item["job_id"], item.get("file_index") or 0)
                return self.feedback.add(**item, data=upload, filename=filename, result=result)
            return self.feedback.add(**item, data=data)
        except UnknownJobError as exc:
            return FeedbackError(404, str(exc.args[0]) if exc.args else "unknown job")
        except FeedbackError as exc:
            return exc

    def feedback_items(self, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        return self.feedback.items(limit, offset), self.feedback.count()

    def delete_feedback(self, item_id: str) -> bool:
        return self.feedback.delete(item_id)

    def check_health(self) -> None:
        self.store.maintain()  # periodic: expire dead workers' leases, purge old results
