"""Rolling out one model's weights with `serve deploy`: the new version answers, a bad one never does."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable

import pytest

from tests.mediagen import talking_face_video

pytestmark = pytest.mark.serve

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


def _at_rest(service) -> Callable[[dict], bool]:
    """Every deployment at its configured minimum, every replica RUNNING.

    An earlier test's burst can leave the autoscaler adding replicas (STARTING) or holding extra ones
    until its downscale delay (60 s) runs out: replicas are compared between states at rest only.
    """
    config = service.fresh_config()

    def least(name: str) -> int:
        dep = service.deployment_config(config, name)
        return int((dep.get("autoscaling_config") or {}).get("min_replicas", dep.get("num_replicas", 1)))

    return lambda models: all(dep["replicas"] == {"RUNNING": least(name)} for name, dep in models.items())


def _analyze_versions(service, clip: bytes) -> dict:
    with service.client() as c:
        r = c.post("/v1/analyze", files={"file": ("clip.mp4", clip)})
    assert r.status_code == 200, r.text
    return {name: m["version"] for name, m in r.json()["models"].items()}


def _with_triage_version(service, version: str, canary: dict | None = None) -> dict:
    config = service.fresh_config()
    user_config = service.deployment_config(config, "FastTriage")["user_config"]
    user_config["version"] = version
    if canary is not None:
        user_config["canary"] = canary
    return config


def _status(call: Callable[[], object]) -> int:
    try:
        return call().status_code
    except Exception:  # a dropped connection counts as a failure
        return -1


class SteadyLoad:
    """Posts clips back to back from a thread until stopped, asking /readyz after each; every status code is kept."""

    def __init__(self, service, clip: bytes) -> None:
        self.service, self.clip = service, clip
        self.statuses: list[int] = []
        self.ready: list[int] = []  # /readyz answers: a rollout must not take the service out of rotation
        self.not_ready: list[dict] = []  # deployment statuses of each non-200 /readyz answer
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.service.client() as c:
            while not self._stop.is_set() and len(self.statuses) < 500:
                self.statuses.append(_status(lambda: c.post("/v1/analyze", files={"file": ("clip.mp4", self.clip)})))
                try:
                    ready = c.get("/readyz")
                    self.ready.append(ready.status_code)
                    if ready.status_code != 200:  # which deployment, in which state: kept for the failure message
                        self.not_ready.append({n: d["status"] for n, d in ready.json()["deployments"].items()})
                except Exception:  # a dropped connection counts as a failure
                    self.ready.append(-1)

    def __enter__(self) -> "SteadyLoad":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)


def _served_triage_version(service) -> str:
    """The FastTriage version the shipped Serve config names (what a rollback returns to)."""
    return service.deployment_config(service.fresh_config(), "FastTriage")["user_config"]["version"]


def _replicas(models: dict) -> dict[str, object]:
    """Replica counts per deployment, and the replica id of each deployment that runs one.

    `/v1/models` shows the placement of whichever replica answered, so for a deployment with
    several replicas (MediaDecoder) only the count can be compared.
    """
    found: dict[str, object] = {}
    for name, dep in models.items():
        found[f"{name} replicas"] = dep["replicas"]
        if dep["replicas"].get("RUNNING") == 1:
            found[name] = dep["model"]["placement"].get("replica_id")
    return found


def test_rollout_then_bad_version_then_rollback(service):
    clip = talking_face_video(seconds=2.0, size=(320, 240), fps=25, with_audio=True, seed=5)
    root = service.weights_dir / "fast_triage"
    shipped = _served_triage_version(service)
    shutil.copytree(root / shipped, root / "rollout-new")
    corrupt = root / "rollout-corrupt"
    shutil.copytree(root / shipped, corrupt)
    blob = bytearray((corrupt / "model.safetensors").read_bytes())
    blob[-1] ^= 0xFF  # one flipped bit: the manifest checksum must catch it
    (corrupt / "model.safetensors").write_bytes(bytes(blob))

    at_rest = _at_rest(service)
    before = _wait_for(service, at_rest, "every deployment at its minimum replicas, all RUNNING")
    try:
        with SteadyLoad(service, clip) as load:
            service.deploy(_with_triage_version(service, "rollout-new"))
            after = _wait_for(  # the weights swap in reconfigure() before the controller marks the update done
                service, lambda m: m["FastTriage"]["model"]["version"] == "fast_triage/rollout-new"
                and m["FastTriage"]["status"] == "HEALTHY" and at_rest(m),
                "the new version, its update done",
            )
            time.sleep(3)  # keep the load on a little past the switch
        assert load.statuses and set(load.statuses) == {200}, load.statuses
        assert set(load.ready) == {200}, (load.ready, load.not_ready)  # ready all along: the old weights answered
        for name in ("CompressionResilient", "AVAlignment", "Fusion"):
            assert after[name]["model"]["version"] == before[name]["model"]["version"], name
        # A user_config change is applied in place: every deployment keeps its replicas, FastTriage included.
        assert _replicas(after) == _replicas(before)
        assert _analyze_versions(service, clip)["FastTriage"] == "fast_triage/rollout-new"

        service.deploy(_with_triage_version(service, "rollout-corrupt"))
        failed = _wait_for(
            service, lambda m: "rollout-corrupt" in (m["FastTriage"]["model"]["error"] or ""), "the failed load report"
        )
        assert failed["FastTriage"]["model"]["version"] == "fast_triage/rollout-new"  # the old one keeps serving
        assert "checksum" in failed["FastTriage"]["model"]["error"].lower() or "sha256" in failed["FastTriage"]["model"]["error"].lower()
        assert _analyze_versions(service, clip)["FastTriage"] == "fast_triage/rollout-new"
    finally:
        service.deploy(service.fresh_config())  # rollback is deploying the previous config
    restored = _wait_for(
        service,
        # the weights swap in reconfigure() before the controller marks the update done: wait for both
        lambda m: m["FastTriage"]["model"]["version"] == f"fast_triage/{shipped}"
        and m["FastTriage"]["model"]["error"] is None and m["FastTriage"]["status"] == "HEALTHY",
        f"rollback to {shipped} with FastTriage HEALTHY",
    )
    assert restored["FastTriage"]["status"] == "HEALTHY"
    assert _analyze_versions(service, clip)["FastTriage"] == f"fast_triage/{shipped}"


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


def test_canary_and_per_request_pins(service):
    clip = talking_face_video(seconds=2.0, size=(320, 240), fps=25, with_audio=True, seed=7)
    root = service.weights_dir / "fast_triage"
    shipped = _served_triage_version(service)
    if not (root / "canary-new").exists():
        shutil.copytree(root / shipped, root / "canary-new")
    try:
        service.deploy(_with_triage_version(service, shipped, canary={"version": "canary-new", "fraction": 1.0}))
        models = _wait_for(service, lambda m: m["FastTriage"]["model"]["canary"] is not None, "the canary")
        assert models["FastTriage"]["model"]["version"] == f"fast_triage/{shipped}"
        assert models["FastTriage"]["model"]["canary"] == {"version": "fast_triage/canary-new", "fraction": 1.0}
        assert _analyze_versions(service, clip)["FastTriage"] == "fast_triage/canary-new"  # fraction 1: the canary answers
        with service.client() as c:
            pinned = c.post(
                "/v1/analyze", files={"file": ("clip.mp4", clip)}, headers={"X-Model-Versions": f"FastTriage={shipped}"}
            )
            assert pinned.status_code == 200, pinned.text
            assert pinned.json()["models"]["FastTriage"]["version"] == f"fast_triage/{shipped}"
            unknown = c.post(
                "/v1/analyze", files={"file": ("clip.mp4", clip)}, headers={"X-Model-Versions": "FastTriage=v9"}
            )
            assert unknown.status_code == 400 and "v9" in unknown.json()["detail"], unknown.text
            malformed = c.post(
                "/v1/analyze", files={"file": ("clip.mp4", clip)}, headers={"X-Model-Versions": "Decoder=v1"}
            )
            assert malformed.status_code == 400, malformed.text
            assert c.get("/healthz").status_code == 200
    finally:
        service.deploy(service.fresh_config())
    _wait_for(service, lambda m: m["FastTriage"]["model"]["canary"] is None, "the canary removed")


def test_a_stuck_analysis_is_answered_with_the_apis_504(service):
    """An analysis running past the ingress's analysis_timeout_s gets JSON 504 + Retry-After, not the proxy's cut."""
    clip = talking_face_video(seconds=2.0, size=(320, 240), fps=25, with_audio=True, seed=7)
    config = service.fresh_config()
    service.deployment_config(config, "Ingress")["user_config"]["analysis_timeout_s"] = 0.01
    try:
        service.deploy(config)
        deadline, r = time.monotonic() + WAIT_S, None
        while time.monotonic() < deadline:
            with service.client() as c:
                r = c.post("/v1/analyze", files={"file": ("clip.mp4", clip)})
            if r.status_code != 200:
                break
            time.sleep(2)
        assert r is not None and r.status_code == 504, r.text if r is not None else None
        assert r.headers["retry-after"].isdigit()
        body = r.json()
        assert body["error"] == "timeout" and "did not finish within" in body["detail"] and body["request_id"]
    finally:
        service.deploy(service.fresh_config())
    service.settle()
    with service.client() as c:
        assert c.post("/v1/analyze", files={"file": ("clip.mp4", clip)}).status_code == 200
