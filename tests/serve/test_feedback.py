"""Analysts' feedback on the running service: labels on a job's file or an analysed request, kept with the media."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest

from tests.mediagen import encode_image

pytestmark = pytest.mark.serve
WAIT_S = 180


def _finished_job(c, files) -> dict:
    job = c.post("/v1/jobs", files=files).json()
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        state = c.get(f"/v1/jobs/{job['id']}").json()
        if state["status"] in ("done", "failed"):
            return state
        time.sleep(0.3)
    pytest.fail(f"job {job['id']} did not finish")


def test_feedback_keeps_labels_with_the_media_they_judge(service) -> None:
    image = encode_image(np.random.default_rng(4).integers(0, 255, (96, 96, 3), dtype=np.uint8), "png")
    with service.client() as c:
        job = _finished_job(c, [("files", ("photo.png", image)), ("files", ("notes.txt", b"not media\n" * 30))])
        good, bad = job["files"]
        assert good["status"] == "done" and bad["status"] == "failed"

        r = c.post("/v1/feedback", json={"job_id": job["id"], "file_index": 0, "label": "fake", "family": "gan",
                                         "note": "from a known generator"})
        assert r.status_code == 201, r.text
        item = r.json()
        assert item["kept_media"] and item["sha256"] == hashlib.sha256(image).hexdigest()
        assert item["verdict"] == good["result"]["verdict"] and item["filename"] == "photo.png"
        assert item["models"]["CompressionResilient"] == good["result"]["models"]["CompressionResilient"]["version"]
        assert item["key_name"] == "anonymous (open service)"

        analysed = c.post("/v1/analyze", files={"file": ("p.png", image)}).json()
        with_file = c.post("/v1/feedback", data={"request_id": analysed["request_id"], "label": "real"},
                           files={"file": ("p.png", image)})
        assert with_file.status_code == 201 and with_file.json()["kept_media"], with_file.text
        assert with_file.json()["filename"] == "p.png"
        label_only = c.post("/v1/feedback", json={"request_id": analysed["request_id"], "label": "real"})
        assert label_only.status_code == 201 and not label_only.json()["kept_media"]

        refused = {
            "a failed file": ({"json": {"job_id": job["id"], "file_index": 1, "label": "real"}}, 409),
            "an unknown job": ({"json": {"job_id": "0" * 32, "label": "real"}}, 404),
            "both ids": ({"json": {"job_id": job["id"], "request_id": "x", "label": "real"}}, 400),
            "neither id": ({"json": {"label": "real"}}, 400),
            "a bad label": ({"json": {"job_id": job["id"], "label": "maybe"}}, 400),
            "a family on real": ({"json": {"job_id": job["id"], "label": "real", "family": "gan"}}, 400),
            "broken JSON": ({"content": b"{", "headers": {"Content-Type": "application/json"}}, 400),
            "a file beside a job id": ({"data": {"job_id": job["id"], "label": "fake"}, "files": {"file": ("p.png", image)}}, 400),
        }
        for what, (kwargs, status) in refused.items():
            r = c.post("/v1/feedback", **kwargs)
            assert r.status_code == status and set(r.json()) == {"error", "detail", "request_id"}, (what, r.text)

        listed = c.get("/v1/feedback", params={"limit": 3}).json()
        assert [i["id"] for i in listed["items"]] == [label_only.json()["id"], with_file.json()["id"], item["id"]]
        assert listed["total"] >= 3
        assert c.get("/v1/feedback", params={"limit": 0}).status_code == 400

        assert c.delete(f"/v1/feedback/{label_only.json()['id']}").status_code == 204
        assert c.delete(f"/v1/feedback/{label_only.json()['id']}").status_code == 404
        paths = c.get("/openapi.json").json()["paths"]
        assert {"post", "get"} <= set(paths["/v1/feedback"]) and "delete" in paths["/v1/feedback/{item_id}"]
