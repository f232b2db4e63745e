"""Asynchronous jobs over HTTP: 202, stages and percent while running, per-file results and errors."""

from __future__ import annotations

import time

import pytest

from pipeline.schemas import AnalyzeResponse
from tests.mediagen import talking_face_video

pytestmark = pytest.mark.serve


def test_job_with_good_and_bad_files_ends_done_with_per_file_outcomes(service):
    clip = talking_face_video(seconds=3.0, size=(320, 240), fps=25, with_audio=True, seed=11)
    files = [("files", ("clip.mp4", clip)), ("files", ("notes.txt", b"not a video\n" * 20)), ("files", ("empty", b""))]
    with service.client() as c:
        accepted = c.post("/v1/jobs", files=files)
        assert accepted.status_code == 202, accepted.text
        job = accepted.json()
        assert job["files"] == 3 and job["status_url"] == f"/v1/jobs/{job['id']}"
        seen_stages, state = set(), {}
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            state = c.get(job["status_url"]).json()
            seen_stages.add(state["stage"])
            assert 0.0 <= state["percent"] <= 100.0
            if state["status"] in ("done", "failed"):
                break
            time.sleep(0.2)
        assert state["status"] == "done", state
        assert state["stage"] == "done" and state["percent"] == 100.0 and state["finished"] is not None
        good, text, empty = state["files"]
        assert good["status"] == "done" and good["error"] is None
        result = AnalyzeResponse.model_validate(good["result"])
        assert result.filename == "clip.mp4" and result.media.kind == "video"
        assert text["status"] == "failed" and text["error"]["error"] == "not_media"
        assert empty["status"] == "failed" and empty["error"]["error"] == "not_media"
        assert seen_stages - {"queued", "done"}, seen_stages  # progress was visible while it ran
        assert c.get("/v1/jobs/0123456789abcdef").status_code == 404


