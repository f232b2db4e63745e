"""The served graph over HTTP: start `serve run <profile>`, send uploads at a fixed concurrency, redeploy, stop.

The instance is started as an operator starts it (`serve run` on a config file), in its own
process group with its own short `RAY_TMPDIR`, so it never joins another local Ray, on a free
port of 127.0.0.1; SIGINT (Serve's own shutdown) stops it. Requests are multipart uploads
through the HTTP proxy, as a client's are.
"""

from __future__ import annotations

import asyncio
import copy
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import yaml

from deployments.proxy_errors import CALLBACK, CALLBACK_ENV

REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 600.0
REQUEST_TIMEOUT_S = 600.0  # the client's; the proxy's own `request_timeout_s` answers first
MIME = {".mp4": "video/mp4", ".jpg": "image/jpeg", ".wav": "audio/wav"}
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


def local_url(url: str) -> str:
    """`url` without a trailing slash; the benchmark loads only this machine, never a remote service."""
    if urlsplit(url).hostname not in LOCAL_HOSTS:
        raise ValueError(f"{url}: the benchmark sends load to 127.0.0.1 only")
    return url.rstrip("/")


def with_triage(config: dict[str, Any], overrides: dict[str, float]) -> dict[str, Any]:
    """A copy of a Serve config whose FastTriage `user_config` has `overrides` applied."""
    config = copy.deepcopy(config)
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] == "FastTriage":
            deployment.setdefault("user_config", {}).update(overrides)
    return config


class ServeInstance:
    """One `serve run` process tree on 127.0.0.1; `start()` returns the cold start in seconds."""

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.workdir = workdir
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._ray_tmp = tempfile.mkdtemp(prefix="ss-bench-ray-")  # short: unix socket paths max ~107 chars
        self._serve = str(Path(sys.executable).with_name("serve"))
        self.config = config

    def _write(self, config: dict[str, Any]) -> Path:
        """The config bound to this port, with a private jobs dir; everything else as given."""
        config = copy.deepcopy(config)
        config.setdefault("http_options", {}).update({"host": "127.0.0.1", "port": self.port})
        for deployment in config["applications"][0]["deployments"]:
            if deployment["name"] == "JobQueue":
                deployment.setdefault("user_config", {})["jobs_dir"] = str(self.workdir / "jobs")
        path = self.workdir / f"serve-{time.monotonic_ns()}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def start(self) -> float:
        """Launch `serve run` and wait for `/readyz` 200: the wall time between the two is the cold start."""
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env |= {"RAY_TMPDIR": self._ray_tmp, CALLBACK_ENV: CALLBACK}  # the proxy's own errors in JSON, as `make serve`
        path = self._write(self.config)
        started = time.perf_counter()
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen([self._serve, "run", str(path)], cwd=REPO, env=env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        while self.proc.poll() is None and time.perf_counter() < started + READY_TIMEOUT_S:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=15).status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"serve run not ready (exit code {self.proc.poll()}):\n{self.tail()}")

    def tail(self, n: int = 40) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else []
        return "\n".join(lines[-n:])

    def deploy(self, config: dict[str, Any]) -> None:
        """`serve deploy` a changed config to the running instance, as an operator rolls one out."""
        found = re.search(r"dashboard at (http://[0-9.]+:\d+)", re.sub(r"\x1b\[[0-9;]*m", "", self.tail(10_000)))
        if not found:
            raise RuntimeError("Ray dashboard address not found in the serve log")
        done = subprocess.run(
            [self._serve, "deploy", str(self._write(config)), "--address", found.group(1)],
            cwd=REPO, capture_output=True, text=True, timeout=180,
            env={**os.environ, "RAY_AUTH_MODE": "token"},  # Ray 2.60 local clusters use token auth
        )
        if done.returncode != 0:
            raise RuntimeError(f"serve deploy failed:\n{done.stdout}{done.stderr}")

    def stop(self) -> None:
        """SIGINT to the process group (Serve shuts down cleanly), SIGKILL if it lingers."""
        if self.proc is not None:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGINT)
                try:
                    self.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self._ray_tmp, ignore_errors=True)


@dataclass
class Upload:
    data: bytes
    filename: str

    def files(self) -> dict[str, tuple[str, bytes, str]]:
        return {"file": (self.filename, self.data, MIME.get(Path(self.filename).suffix, "application/octet-stream"))}


@dataclass
class Answer:
    ok: bool
    latency_ms: float
    timings_ms: dict[str, float] = field(default_factory=dict)
    early_exit: bool = False
    error: str | None = None


async def post(client: httpx.AsyncClient, upload: Upload) -> Answer:
    """One `/v1/analyze`, timed from before the upload is sent to the last byte of the answer."""
    started = time.perf_counter()
    try:
        response = await client.post("/v1/analyze", files=upload.files())
    except httpx.HTTPError as exc:
        return Answer(False, (time.perf_counter() - started) * 1e3, error=f"{type(exc).__name__}: {exc}")
    latency = (time.perf_counter() - started) * 1e3
    if response.status_code != 200:
        return Answer(False, latency, error=f"{response.status_code}: {response.text[:300]}")
    body = response.json()
    return Answer(True, latency, body.get("timings_ms", {}), bool(body.get("early_exit")))


async def _load(url: str, upload: Upload, concurrency: int, requests: int) -> tuple[list[Answer], float]:
    answers: list[Answer] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S, limits=limits) as client:

        async def client_loop() -> None:
            for _ in range(requests):
                answers.append(await post(client, upload))

        started = time.perf_counter()
        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    return answers, time.perf_counter() - started


def load(url: str, upload: Upload, concurrency: int, requests: int) -> tuple[list[Answer], float]:
    """`concurrency` clients, each sending `requests` uploads back to back; the answers and the wall time."""
    return asyncio.run(_load(url, upload, concurrency, requests))


def wait_for_early_exit(url: str, upload: Upload, expected: bool, timeout_s: float = 180.0) -> bool:
    """After `serve deploy`: send uploads until they show `expected` early exits (`reconfigure` lands later)."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        (answer,), _ = load(url, upload, 1, 1)
        if answer.ok and answer.early_exit == expected:
            return True
        time.sleep(1.0)
    return False


def summarize(concurrency: int, answers: list[Answer], elapsed_s: float) -> dict[str, Any]:
    """One load level: clips/min, the client's latency percentiles, and the ingress's mean stage times."""
    ok = [a for a in answers if a.ok]
    p50, p95, p99 = (float(p) for p in np.percentile([a.latency_ms for a in ok], [50, 95, 99])) if ok else (None,) * 3
    stages = sorted({s for a in ok for s in a.timings_ms})
    return {
        "concurrency": concurrency, "requests": len(answers), "ok": len(ok), "elapsed_s": round(elapsed_s, 2),
        "clips_per_min": len(ok) / elapsed_s * 60.0, "p50_ms": p50, "p95_ms": p95, "p99_ms": p99,
        "early_exits": sum(a.early_exit for a in ok),
        "errors": [a.error for a in answers if not a.ok][:5],
        "timings_ms_mean": {s: statistics.fmean(a.timings_ms[s] for a in ok if s in a.timings_ms) for s in stages},
        "latencies_ms": [round(a.latency_ms, 1) for a in answers],
    }
