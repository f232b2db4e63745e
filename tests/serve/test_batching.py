"""`@serve.batch` switched on through user_config: concurrent requests share forward passes, same answers."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.mediagen import talking_face_video

WAIT_S = 180
BATCHED = ("FastTriage", "CompressionResilient", "Fusion")


def _post(service, clip: bytes) -> dict:
    with service.client() as c:
        r = c.post("/v1/analyze", files={"file": ("clip.mp4", clip)})
    assert r.status_code == 200, r.text
    return r.json()


def _batch_sizes(body: dict) -> tuple:
    return tuple(body["modalities"][m]["details"].get("batch_size") for m in ("triage", "visual"))


def _fusion_batches(service) -> tuple[float, float]:
    """(requests, batches) Fusion's batch handler has seen, from Serve's `actual_batch_size` histogram."""
    text = service.metrics_text()
    found = {}
    for kind in ("sum", "count"):
        values = [
            float(m.group(1))
            for line in text.splitlines()
            if line.startswith(f"ray_serve_actual_batch_size_{kind}{{") and 'deployment="Fusion"' in line
            for m in [re.search(r"\}\s+(\S+)$", line)] if m
        ]
        found[kind] = sum(values)
    return found["sum"], found["count"]


def test_concurrent_requests_share_a_forward_pass_and_get_the_same_answers(service):
    clips = [talking_face_video(seconds=s, size=(320, 240), fps=25, with_audio=True, seed=20 + i)
             for i, s in enumerate((1.0, 1.5, 2.0))]
    config = service.fresh_config()
    for name in BATCHED:
        service.deployment_config(config, name)["user_config"].update(max_batch_size=4, batch_wait_timeout_s=0.5)
    # Early exit off, so every clip reaches CompressionResilient and Fusion.
    service.deployment_config(config, "FastTriage")["user_config"].update(early_exit_low=0.0, early_exit_high=1.0)
    try:
        service.deploy(config)
        deadline = time.monotonic() + WAIT_S
        while True:  # the new user_config reaches the replicas by reconfigure, without a restart
            body = _post(service, clips[0])
            if not body["early_exit"] and body["modalities"]["visual"]["status"] == "ok":
                break
            assert time.monotonic() < deadline, "the batching config never took effect"
            time.sleep(2)
        # One at a time: each request waits out batch_wait_timeout_s alone and runs in a batch of 1.
        alone = [_post(service, clip) for clip in clips]
        assert all(_batch_sizes(b) == (1, 1) for b in alone), [_batch_sizes(b) for b in alone]
        before = _fusion_batches(service)
        shared, posted = None, 0
        for _ in range(5):  # three at once; the 0.5 s wait lets later decodes catch up
            with ThreadPoolExecutor(len(clips)) as pool:
                together = list(pool.map(lambda clip: _post(service, clip), clips))
            posted += len(clips)
            if max(max(_batch_sizes(b)) for b in together) >= 2:
                shared = together
                break
        assert shared is not None, "three concurrent requests never shared a batch"
        for a, b in zip(alone, shared):
            for m in ("triage", "visual", "av", "audio"):
                assert b["modalities"][m]["score"] == pytest.approx(a["modalities"][m]["score"], abs=1e-4), m
            assert b["fake_probability"] == pytest.approx(a["fake_probability"], abs=1e-4)
            assert b["verdict"] == a["verdict"]
            assert [k["t"] for k in b["keyframes"]] == [k["t"] for k in a["keyframes"]]
        deadline = time.monotonic() + 60
        while True:  # Fusion has no per-request detail; Serve's batch metrics say whether it batched
            requests, batches = (x - y for x, y in zip(_fusion_batches(service), before))
            if requests >= posted:
                break
            assert time.monotonic() < deadline, f"Fusion batch metrics never caught up: {requests} requests"
            time.sleep(2)
        assert batches < requests  # some Fusion batch held more than one request
    finally:
        service.deploy(service.fresh_config())
