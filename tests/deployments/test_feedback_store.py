"""Analysts' labels: kept durably with the media of the file they judged, private, bounded, deletable."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from deployments.feedback import FeedbackError, FeedbackStore
from deployments.jobs import JobStore, UnknownJobError

RESULT = {"request_id": "r1", "filename": "clip.mp4", "verdict": "real", "fake_probability": 0.2,
          "models": {"CompressionResilient": {"version": "compression_resilient/v2"}}}


def test_items_keep_label_answer_and_media_once_per_content(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "fb")
    first = store.add(label="fake", family="faceswap", note="seen on a forum", data=b"video-bytes", result=RESULT,
                      job_id="a" * 32, file_index=0, key_name="analyst-1", now=1.0)
    second = store.add(label="fake", data=b"video-bytes", request_id="r2", filename="again.mp4", now=2.0)
    label_only = store.add(label="real", request_id="r3", now=3.0)
    assert first["kept_media"] and first["sha256"] == second["sha256"] and first["nbytes"] == 11
    assert first["verdict"] == "real" and first["fake_probability"] == 0.2
    assert first["models"] == {"CompressionResilient": "compression_resilient/v2"} and first["filename"] == "clip.mp4"
    assert not label_only["kept_media"] and label_only["sha256"] is None
    assert [i["id"] for i in store.items()] == [label_only["id"], second["id"], first["id"]]  # newest first
    assert store.count() == 3 and store.media_path(first).read_bytes() == b"video-bytes"
    assert len(list((tmp_path / "fb" / "media").iterdir())) == 1  # one copy of one content

    # Private: the folders 0700, the database and media 0600.
    assert stat.S_IMODE((tmp_path / "fb").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "fb" / "feedback.sqlite3").stat().st_mode) == 0o600
    assert stat.S_IMODE(store.media_path(first).stat().st_mode) == 0o600

    # Deleting keeps media another item still holds, then drops it with the last one.
    assert store.delete(first["id"]) and store.media_path(second).exists()
    assert store.delete(second["id"]) and not store.media_path(second).exists()
    assert not store.delete(second["id"])
    assert FeedbackStore(tmp_path / "fb").count() == 1  # durable: a new store reads the same items


@pytest.mark.parametrize("fields, detail", [
    ({"label": "maybe"}, "label"),
    ({"label": "real", "family": "faceswap"}, "only for label fake"),
    ({"label": "fake", "family": "../etc"}, "family"),
    ({"label": "fake", "note": "x" * 2001}, "note"),
])
def test_bad_items_are_refused_with_400(tmp_path: Path, fields: dict, detail: str) -> None:
    with pytest.raises(FeedbackError) as refused:
        FeedbackStore(tmp_path).add(**fields)
    assert refused.value.status == 400 and detail in refused.value.detail


def test_media_past_the_budget_is_refused_with_507_and_nothing_left_behind(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path, max_bytes=10)
    store.add(label="fake", data=b"12345678")
    with pytest.raises(FeedbackError) as full:
        store.add(label="fake", data=b"abcdefgh")
    assert full.value.status == 507 and store.count() == 1
    assert sorted(p.name for p in (tmp_path / "media").iterdir()) == [store.items()[0]["sha256"]]


def test_a_jobs_finished_file_gives_its_upload_and_result(tmp_path: Path) -> None:
    jobs = JobStore(tmp_path, result_ttl_s=100.0, lease_s=10.0, max_attempts=2)
    job = jobs.submit([("a.mp4", b"aaa"), ("b.mp4", b"bbb")])
    claim = jobs.claim("w", now=1.0)
    with pytest.raises(FeedbackError) as running:
        jobs.finished_file(job, claim.index)
    assert running.value.status == 409
    jobs.complete(job, claim.index, "w", result=RESULT, now=2.0)
    assert jobs.finished_file(job, 0) == ("a.mp4", RESULT, b"aaa")
    for bad in ((job, 2), ("0" * 32, 0), ("../x", 0)):
        with pytest.raises(UnknownJobError):
            jobs.finished_file(*bad)
