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
        # The web page's keyframe pictures: one JPEG per keyframe of the finished file, 404 JSON otherwise.
        assert result.keyframes
        for k in range(len(result.keyframes)):
            picture = c.get(f"{job['status_url']}/files/0/keyframes/{k}.jpg")
            assert picture.status_code == 200 and picture.headers["content-type"] == "image/jpeg"
            assert picture.content[:2] == b"\xff\xd8"
        for missing in (f"{job['status_url']}/files/0/keyframes/{len(result.keyframes)}.jpg",
                        f"{job['status_url']}/files/1/keyframes/0.jpg", "/v1/jobs/../../etc/keyframes/0.jpg",
                        "/v1/jobs/0123456789abcdef0123456789abcdef/files/0/keyframes/0.jpg"):
            r = c.get(missing)
            assert r.status_code == 404 and set(r.json()) == {"error", "detail", "request_id"}, (missing, r.text)
        # Heat-maps on request, from the version that scored the file, for keyframes where a face was scored.
        heat = c.get(f"{job['status_url']}/files/0/keyframes/0/heatmap.jpg")
        assert heat.status_code == 200, heat.text
        assert heat.headers["content-type"] == "image/jpeg" and heat.content[:2] == b"\xff\xd8"
        assert heat.headers["x-model-version"] == result.models["CompressionResilient"].version
        assert float(heat.headers["x-heatmap-peak"]) >= float(heat.headers["x-heatmap-trough"])
        for missing in (f"{job['status_url']}/files/0/keyframes/{len(result.keyframes)}/heatmap.jpg",
                        f"{job['status_url']}/files/1/keyframes/0/heatmap.jpg"):
            r = c.get(missing)
            assert r.status_code == 404 and r.json()["error"] == "not_found", (missing, r.text)


def test_the_web_page_is_served_at_the_root(service):
    with service.client() as c:
        r = c.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    for part in ('<input id="file"', '<label for="file">', '<label for="key">', '<label for="url">', 'fetch("/v1/jobs"',
                 "/keyframes/", "/heatmap.jpg", 'aria-live="polite"', "sessionStorage"):
        assert part in page, part
    assert "default-src 'self'" in r.headers["content-security-policy"]


