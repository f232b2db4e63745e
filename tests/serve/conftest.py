"""One Serve instance per test session: the real `serve run cluster/serve.cpu.yaml`, on a free port.

Starting Ray and seven deployments costs tens of seconds on two cores, so every Serve test
shares this fixture. The instance runs in its own process group with its own Ray temp dir
and is torn down with SIGINT (Serve's own shutdown), then SIGKILL if it lingers.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import socket
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from deployments.proxy_errors import CALLBACK, CALLBACK_ENV

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 420
TEST_MAX_UPLOAD_BYTES = 8 * 1024 * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Service:
    url: str
    ray_tmp: Path
    log: Path
    config: dict  # the config the session started with; tests that redeploy restore it
    weights_dir: Path  # a private copy of weights/ that tests may add versions to

    def client(self, timeout: float = 180.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def dashboard(self) -> str:
        text = re.sub(r"\x1b\[[0-9;]*m", "", self.log.read_text(errors="replace"))
        found = re.search(r"dashboard at (http://[0-9.]+:\d+)", text)
        assert found, "Ray dashboard address not found in the serve log"
        return found.group(1)

    def deploy(self, config: dict) -> None:
        """`serve deploy` a config to the running instance, as an operator would."""
        path = self.log.with_name(f"deploy-{time.monotonic_ns()}.yaml")
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        serve_cli = Path(sys.executable).with_name("serve")
        done = subprocess.run(
            [str(serve_cli), "deploy", str(path), "--address", self.dashboard()],
            cwd=REPO, capture_output=True, text=True, timeout=120,
            # Ray 2.60 local clusters use token auth (token in ~/.ray/auth_token); the CLI must opt in.
            env={**os.environ, "RAY_AUTH_MODE": "token"},
        )
        assert done.returncode == 0, done.stdout + done.stderr

    def settle(self, timeout_s: float = 180.0) -> None:
        """Wait until /readyz shows every deployment HEALTHY: a test that redeployed leaves no update behind."""
        deadline, body = time.monotonic() + timeout_s, {}
        while time.monotonic() < deadline:
            body = httpx.get(f"{self.url}/readyz", timeout=15).json()
            if all(d["status"] == "HEALTHY" for d in body["deployments"].values()):
                return
            time.sleep(1)
        pytest.fail(f"deployments not HEALTHY after {timeout_s:.0f} s: {body}")

    def metrics_text(self) -> str:
        """Everything Ray's metrics agents export, read from their loopback port like Prometheus would."""
        found = list(self.ray_tmp.rglob("prom_metrics_service_discovery.json"))
        assert found, "Ray wrote no Prometheus service-discovery file"
        targets = [t for group in json.loads(found[0].read_text()) for t in group["targets"]]
        texts = []
        for target in targets:
            port = target.rsplit(":", 1)[1]
            texts.append(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
        return "\n".join(texts)

    def deployment_config(self, config: dict, name: str) -> dict:
        return next(d for d in config["applications"][0]["deployments"] if d["name"] == name)

    def fresh_config(self) -> dict:
        return copy.deepcopy(self.config)


def _tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("serve")
    config = yaml.safe_load((REPO / "cluster" / "serve.cpu.yaml").read_text())
    port = _free_port()
    config["http_options"]["port"] = port
    ingress = next(d for d in config["applications"][0]["deployments"] if d["name"] == "Ingress")
    ingress["user_config"]["max_upload_bytes"] = TEST_MAX_UPLOAD_BYTES  # so a 413 test needs no 200 MB body
    jobs = next(d for d in config["applications"][0]["deployments"] if d["name"] == "JobQueue")
    jobs["user_config"]["jobs_dir"] = str(tmp / "jobs")
    weights_dir = tmp / "weights"
    shutil.copytree(REPO / "weights", weights_dir)
    config["applications"][0]["args"] = {"weights_dir": str(weights_dir)}
    config_path = tmp / "serve.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log = tmp / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # A short private temp dir isolates this Ray from any other local one (unix socket paths max ~107 chars).
    ray_tmp = tempfile.mkdtemp(prefix="ss-ray-")
    env["RAY_TMPDIR"] = ray_tmp
    env[CALLBACK_ENV] = CALLBACK  # as `make serve` does: the proxy's own errors in the API's JSON
    env["RAY_metrics_report_interval_ms"] = "2000"  # metrics reach Prometheus within seconds, not ~10 s
    serve_cli = Path(sys.executable).with_name("serve")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(serve_cli), "run", str(config_path)],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"serve run exited with {proc.returncode}:\n{_tail(log)}")
            try:
                ready = httpx.get(f"{url}/readyz", timeout=15)
                if ready.status_code == 200:
                    break
                failed = [n for n, d in ready.json().get("deployments", {}).items() if d["status"] == "DEPLOY_FAILED"]
                if failed:
                    pytest.fail(f"deployments failed to start: {failed}\n{_tail(log)}")
            except (httpx.HTTPError, ValueError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"service not ready after {READY_TIMEOUT_S}s:\n{_tail(log)}")
            time.sleep(2)
        yield Service(url=url, ray_tmp=Path(ray_tmp), log=log, config=config, weights_dir=weights_dir)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shutil.rmtree(ray_tmp, ignore_errors=True)
