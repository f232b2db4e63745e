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
        named = c.post("/v1/feedback", json={"request_id": "r9", "label": "real", "filename": "../etc/a<b>.png"})
        assert named.status_code == 201 and named.json()["filename"] == "a_b_.png"  # sanitized like an upload's name
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

        listed = c.get("/v1/feedback", params={"limit": 4}).json()
        newest = [label_only.json()["id"], named.json()["id"], with_file.json()["id"], item["id"]]
        assert [i["id"] for i in listed["items"]] == newest
        assert listed["total"] >= 4
        assert c.get("/v1/feedback", params={"limit": 0}).status_code == 400

        assert c.delete(f"/v1/feedback/{label_only.json()['id']}").status_code == 204
        assert c.delete(f"/v1/feedback/{label_only.json()['id']}").status_code == 404
        paths = c.get("/openapi.json").json()["paths"]
        assert {"post", "get"} <= set(paths["/v1/feedback"]) and "delete" in paths["/v1/feedback/{item_id}"]


def test_an_update_learnt_from_feedback_is_served_as_a_canary(service, tmp_path) -> None:
    """`spectrashield update`'s bundle and canary config, deployed: /v1/models shows the canary and a pinned
    request is answered by it (the bundle, with its replay buffer listed in the manifest, loads strictly)."""
    import yaml

    from deployments.feedback import FeedbackStore
    from tests.serve.test_rollout import _wait_for
    from training.benchmark import main as generate
    from training.continual import update_main
    from training.manifest import read_manifest

    bench = tmp_path / "bench"
    generate([str(bench), "--videos", "0", "--images", "30", "--audio", "0", "--seed", "5", "--no-progress"])
    store = FeedbackStore(tmp_path / "feedback")
    entries = list(read_manifest(bench / "manifest.jsonl"))
    for e in [e for e in entries if e.label == 1][:3] + [e for e in entries if e.label == 0][:1]:
        store.add(label="fake" if e.label else "real", data=(bench / e.path).read_bytes(), request_id="r")
    served = service.deployment_config(service.config, "CompressionResilient")["user_config"]["version"]
    canary_yaml = tmp_path / "canary.yaml"
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(service.fresh_config(), sort_keys=False))
    assert update_main([
        "--feedback", str(tmp_path / "feedback"), "--from", served, "--version", "learnt", "--weights-dir",
        str(service.weights_dir), "--replay-manifest", str(bench / "manifest.jsonl"), "--eval-manifest",
        str(bench / "manifest.jsonl"), "--serve-config", str(tmp_path / "serve.yaml"), "--canary-fraction", "0.5",
        "--out-config", str(canary_yaml),
    ]) == 0
    image = (bench / next(e for e in entries if e.kind == "image").path).read_bytes()
    try:
        service.deploy(yaml.safe_load(canary_yaml.read_text()))
        models = _wait_for(service, lambda m: m["CompressionResilient"]["model"]["canary"] is not None, "the canary")
        assert models["CompressionResilient"]["model"]["canary"] == {
            "version": "compression_resilient/learnt", "fraction": 0.5}
        with service.client() as c:
            r = c.post("/v1/analyze", files={"file": ("i.png", image)},
                       headers={"X-Model-Versions": "CompressionResilient=learnt"})
        assert r.status_code == 200, r.text
        assert r.json()["models"]["CompressionResilient"]["version"] == "compression_resilient/learnt"
    finally:
        service.deploy(service.fresh_config())
    _wait_for(service, lambda m: m["CompressionResilient"]["model"]["canary"] is None, "the canary removed")
