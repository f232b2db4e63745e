"""Rolling out one model's weights with `serve deploy`: the new version answers, a bad one never does."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable

import pytest

from tests.mediagen import talking_face_video

WAIT_S = 180


def _models(service) -> dict:
    with service.client() as c:
        r = c.get("/v1/models")
        assert r.status_code == 200, r.text
        return r.json()["deployments"]


def _wait_for(service, condition: Callable[[dict], bool], what: str) -> dict:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        models = _models(service)
        if condition(models):
            return models
        time.sleep(2)
    pytest.fail(f"timed out waiting for {what}: {models}")


def _analyze_versions(service, clip: bytes) -> dict:
    with service.client() as c:
        r = c.post("/v1/analyze", files={"file": ("clip.mp4", clip)})
    assert r.status_code == 200, r.text
    return {name: m["version"] for name, m in r.json()["models"].items()}


def _with_triage_version(service, version: str) -> dict:
    config = service.fresh_config()
    service.deployment_config(config, "FastTriage")["user_config"]["version"] = version
    return config


def test_rollout_then_bad_version_then_rollback(service):
    clip = talking_face_video(seconds=2.0, size=(320, 240), fps=25, with_audio=True, seed=5)
    root = service.weights_dir / "fast_triage"
    shutil.copytree(root / "v0", root / "v1")
    corrupt = root / "v2-corrupt"
    shutil.copytree(root / "v0", corrupt)
    blob = bytearray((corrupt / "model.safetensors").read_bytes())
    blob[-1] ^= 0xFF  # one flipped bit: the manifest checksum must catch it
    (corrupt / "model.safetensors").write_bytes(bytes(blob))

    before = _models(service)
    try:
        service.deploy(_with_triage_version(service, "v1"))
        after = _wait_for(
            service, lambda m: m["FastTriage"]["model"]["version"] == "fast_triage/v1", "FastTriage v1"
        )
        for name in ("CompressionResilient", "AVAlignment", "Fusion"):
            assert after[name]["model"] == before[name]["model"], name
        assert _analyze_versions(service, clip)["FastTriage"] == "fast_triage/v1"

        service.deploy(_with_triage_version(service, "v2-corrupt"))
        failed = _wait_for(
            service, lambda m: "v2-corrupt" in (m["FastTriage"]["model"]["error"] or ""), "the failed load report"
        )
        assert failed["FastTriage"]["model"]["version"] == "fast_triage/v1"  # the old one keeps serving
        assert "checksum" in failed["FastTriage"]["model"]["error"].lower() or "sha256" in failed["FastTriage"]["model"]["error"].lower()
        assert _analyze_versions(service, clip)["FastTriage"] == "fast_triage/v1"
    finally:
        service.deploy(service.fresh_config())  # rollback is deploying the previous config
    restored = _wait_for(
        service,
        lambda m: m["FastTriage"]["model"]["version"] == "fast_triage/v0" and m["FastTriage"]["model"]["error"] is None,
        "rollback to v0",
    )
    assert restored["FastTriage"]["status"] == "HEALTHY"
    assert _analyze_versions(service, clip)["FastTriage"] == "fast_triage/v0"


def test_triage_early_exit_follows_user_config(service):
    clip = talking_face_video(seconds=2.0, size=(320, 240), fps=25, with_audio=True, seed=6)
    config = service.fresh_config()
    # Every clip scoring below 0.999 now counts as settled-real by triage alone.
    service.deployment_config(config, "FastTriage")["user_config"].update(early_exit_low=0.999, early_exit_high=1.0)
    try:
        service.deploy(config)
        deadline, body = time.monotonic() + WAIT_S, {}
        while time.monotonic() < deadline:
            with service.client() as c:
                r = c.post("/v1/analyze", files={"file": ("clip.mp4", clip)})
            assert r.status_code == 200, r.text
            body = r.json()
            if body["early_exit"]:
                break
            time.sleep(2)
        assert body["early_exit"] is True, body
        assert body["verdict"] == "real" and body["is_fake"] is False
        assert body["modalities"]["triage"]["status"] == "ok"
        for m in ("visual", "av", "audio"):
            assert body["modalities"][m]["status"] == "skipped"
            assert body["modalities"][m]["reason"].startswith("early exit")
        assert set(body["models"]) == {"MediaDecoder", "FastTriage"}
        assert body["keyframes"] == [] and "fusion" not in body["timings_ms"]
        assert body["gate_weights"]["triage"] == 1.0
    finally:
        service.deploy(service.fresh_config())
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        with service.client() as c:
            if not c.post("/v1/analyze", files={"file": ("clip.mp4", clip)}).json()["early_exit"]:
                return
        time.sleep(2)
    pytest.fail("early exit still on after restoring the config")
