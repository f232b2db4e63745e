"""The job queue's durable state: stages, retries after a dead worker, expiry, restarts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deployments.jobs import JobStore, UnknownJobError


def _store(root: Path, **kw) -> JobStore:
    return JobStore(root, **{"result_ttl_s": 100.0, "lease_s": 10.0, "max_attempts": 2, **kw})


@pytest.mark.parametrize("keep_uploads", [False, True])
def test_a_job_runs_through_its_stages_to_done(tmp_path: Path, keep_uploads: bool) -> None:
    store = _store(tmp_path, keep_uploads=keep_uploads)
    job = store.submit([("a.mp4", b"aaa"), ("b.txt", b"bbb")])
    assert store.get(job)["status"] == "queued" and store.get(job)["percent"] == 0
    first = store.claim("w1", now=1.0)
    assert (first.job_id, first.index, first.filename, first.data, first.n_files) == (job, 0, "a.mp4", b"aaa", 2)
    assert store.progress(job, 0, "w1", "branches", now=2.0)
    state = store.get(job)
    assert state["status"] == "running" and state["stage"] == "branches" and 0 < state["percent"] < 50
    assert store.complete(job, 0, "w1", result={"verdict": "real"}, now=3.0)
    second = store.claim("w1", now=3.0)
    assert store.complete(job, second.index, "w1", error={"error": "not_media", "detail": "text"}, now=4.0)
    done = store.get(job)
    assert done["status"] == "done" and done["stage"] == "done" and done["percent"] == 100 and done["finished"] == 4.0
    assert done["files"][0]["result"] == {"verdict": "real"} and done["files"][1]["error"]["error"] == "not_media"
    assert store.claim("w1", now=5.0) is None
    # Uploads go once every file has ended, or (for analysts' feedback) stay as long as the results.
    assert (tmp_path / "uploads" / job).exists() == keep_uploads
    store.maintain(now=4.0 + 101.0)  # past result_ttl_s
    assert not (tmp_path / "uploads" / job).exists()


def test_a_dead_workers_file_is_retried_then_failed_with_a_reason(tmp_path: Path) -> None:
    store = _store(tmp_path, lease_s=10.0, max_attempts=2)
    job = store.submit([("a.mp4", b"aaa")])
    assert store.claim("dead-1", now=0.0).attempt == 1
    assert store.claim("w2", now=5.0) is None  # lease still held
    retry = store.claim("dead-2", now=11.0)  # no heartbeat for > lease_s: back in the queue
    assert retry is not None and retry.attempt == 2 and retry.data == b"aaa"
    assert not store.progress(job, 0, "dead-1", "triage", now=11.5)  # the first worker lost its lease
    assert not store.complete(job, 0, "dead-1", result={"late": True}, now=11.5)
    store.maintain(now=30.0)
    failed = store.get(job)
    assert failed["status"] == "failed" and failed["files"][0]["attempts"] == 2
    assert failed["files"][0]["error"]["error"] == "worker_lost"


def test_heartbeats_keep_the_lease(tmp_path: Path) -> None:
    store = _store(tmp_path, lease_s=10.0)
    job = store.submit([("a.mp4", b"aaa")])
    store.claim("w1", now=0.0)
    for t in (8.0, 16.0, 24.0):
        assert store.progress(job, 0, "w1", "decoding", now=t)
    assert store.claim("w2", now=30.0) is None
    assert store.get(job)["files"][0]["attempts"] == 1


def test_state_survives_a_restart_and_results_expire(tmp_path: Path) -> None:
    store = _store(tmp_path, result_ttl_s=50.0)
    job = store.submit([("a.mp4", b"aaa")])
    again = _store(tmp_path, result_ttl_s=50.0)  # a new process on the same jobs_dir
    claim = again.claim("w1", now=1.0)
    again.complete(job, claim.index, "w1", result={"ok": 1}, now=2.0)
    assert _store(tmp_path).get(job)["status"] == "done"
    again.maintain(now=40.0)
    assert again.get(job)["status"] == "done"
    again.maintain(now=60.0)
    with pytest.raises(UnknownJobError):
        again.get(job)


def test_empty_jobs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        _store(tmp_path).submit([])


def test_the_store_is_private_and_sweeps_uploads_without_rows(tmp_path: Path) -> None:
    import stat

    root = tmp_path / "jobs"
    store = _store(root)
    job = store.submit([("a.mp4", b"aaa")])
    for path in (root, root / "uploads", root / "uploads" / job):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    assert stat.S_IMODE((root / "jobs.sqlite3").stat().st_mode) == 0o600
    (root / "uploads" / ".deadbeef.part").mkdir()  # a submit cut short by a crash, before or after its rename
    (root / "uploads" / "0123abcd").mkdir()
    store = _store(root)  # a restart
    assert sorted(p.name for p in (root / "uploads").iterdir()) == [job]
    assert store.claim("w", now=1.0).data == b"aaa"


def test_a_planted_symlink_is_not_used_as_the_store(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "jobs").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="plain directory"):
        _store(tmp_path / "jobs")


def test_thumbnails_are_kept_with_the_results_and_purged_with_them(tmp_path: Path) -> None:
    store = _store(tmp_path, result_ttl_s=10.0)
    job = store.submit([("a.mp4", b"aaa")])
    claim = store.claim("w", now=1.0)
    store.keep_thumbnails(job, 0, [b"\xff\xd8one", b"\xff\xd8two"])
    store.complete(job, claim.index, "w", result={"verdict": "real"}, now=2.0)
    assert store.thumbnail(job, 0, 1) == b"\xff\xd8two"
    for bad in ((job, 0, 2), (job, 1, 0), ("../" + job[3:], 0, 0), ("0" * 32, 0, 0)):
        with pytest.raises(UnknownJobError):
            store.thumbnail(*bad)
    store.maintain(now=100.0)  # past result_ttl_s
    assert not (tmp_path / "thumbnails" / job).exists()
    with pytest.raises(UnknownJobError):
        store.thumbnail(job, 0, 0)


def test_face_crops_are_kept_beside_the_thumbnails_with_the_version_that_scored_them(tmp_path: Path) -> None:
    store = _store(tmp_path, result_ttl_s=10.0)
    job = store.submit([("a.mp4", b"aaa")])
    claim = store.claim("w", now=1.0)
    crop = np.arange(128 * 128 * 3, dtype=np.uint32).astype(np.uint8).reshape(128, 128, 3)
    store.keep_thumbnails(job, 0, [b"\xff\xd8one", b"\xff\xd8two"], [crop, None])  # no face at keyframe 1
    store.complete(job, claim.index, "w", now=2.0,
                   result={"models": {"CompressionResilient": {"version": "compression_resilient/v2"}}})
    got, version = store.face_crop(job, 0, 0)
    assert np.array_equal(got, crop) and got.dtype == np.uint8 and version == "compression_resilient/v2"
    for bad in ((job, 0, 1), (job, 0, 2), (job, 1, 0), ("0" * 32, 0, 0)):
        with pytest.raises(UnknownJobError):
            store.face_crop(*bad)
    store.maintain(now=100.0)  # past result_ttl_s: purged with the results
    with pytest.raises(UnknownJobError):
        store.face_crop(job, 0, 0)
