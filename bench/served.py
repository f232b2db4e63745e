"""The served graph over HTTP: start `serve run <profile>`, time requests, redeploy, stop.

The instance is started the way an operator starts it (`serve run` on a config file) and the way
`tests/serve/conftest.py` does: its own process group, its own short `RAY_TMPDIR` so it never
joins another local Ray, a free port on 127.0.0.1, and SIGINT (Serve's own shutdown) to stop it.
Every request goes through the HTTP proxy with the file as a multipart upload, as a client's would.
"""

from __future__ import annotations

import asyncio
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 600.0
REQUEST_TIMEOUT_S = 600.0  # the client's; the proxy's own `request_timeout_s` answers first
MIME = {".mp4": "video/mp4", ".jpg": "image/jpeg", ".wav": "audio/wav"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def local_config(config: dict[str, Any], port: int, jobs_dir: Path) -> dict[str, Any]:
    """The profile bound to 127.0.0.1:`port` with a private jobs dir; everything else as the profile says."""
    config = yaml.safe_load(yaml.safe_dump(config))  # deep copy of plain data
    config.setdefault("http_options", {}).update({"host": "127.0.0.1", "port": port})
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] == "JobQueue":
            deployment.setdefault("user_config", {})["jobs_dir"] = str(jobs_dir)
    return config


class ServeInstance:
    """One `serve run` process tree; `start()` returns the cold start in seconds."""

    def __init__(self, config: dict[str, Any], workdir: Path, log: Callable[[str], None] = print) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.config = local_config(config, self.port, workdir / "jobs")
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "serve.log"
        self._log = log
        self._ray_tmp: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def _write_config(self, config: dict[str, Any]) -> Path:
        path = self.workdir / f"serve-{time.monotonic_ns()}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def start(self, on_launch: Callable[[int], None] | None = None) -> float:
        """Launch `serve run` and wait for `/readyz` 200: the wall time between the two is the cold start."""
        path = self._write_config(self.config)
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        # short private temp dir: isolates this Ray from any other local one (unix socket paths max ~107 chars)
        self._ray_tmp = tempfile.mkdtemp(prefix="ss-bench-ray-")
        env["RAY_TMPDIR"] = self._ray_tmp
        serve_cli = Path(sys.executable).with_name("serve")
        started = time.perf_counter()
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(serve_cli), "run", str(path)],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        if on_launch is not None:
            on_launch(self.proc.pid)
        self.wait_ready(deadline=started + READY_TIMEOUT_S)
        return time.perf_counter() - started

    def wait_ready(self, deadline: float) -> None:
        assert self.proc is not None
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve run exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                ready = httpx.get(f"{self.url}/readyz", timeout=15)
                if ready.status_code == 200:
                    return
                failed = [n for n, d in ready.json().get("deployments", {}).items() if d["status"] == "DEPLOY_FAILED"]
                if failed:
                    raise RuntimeError(f"deployments failed to start: {failed}\n{self.tail()}")
            except (httpx.HTTPError, ValueError):
                pass
            if time.perf_counter() > deadline:
                raise RuntimeError(f"not ready after {READY_TIMEOUT_S:.0f} s:\n{self.tail()}")
            time.sleep(0.25)

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def dashboard(self) -> str:
        text = re.sub(r"\x1b\[[0-9;]*m", "", self.log_path.read_text(errors="replace"))
        found = re.search(r"dashboard at (http://[0-9.]+:\d+)", text)
        if not found:
            raise RuntimeError("Ray dashboard address not found in the serve log")
        return found.group(1)

    def deploy(self, config: dict[str, Any]) -> None:
        """`serve deploy` a changed profile to the running instance, as an operator rolls out a config."""
        path = self._write_config(local_config(config, self.port, self.workdir / "jobs"))
        serve_cli = Path(sys.executable).with_name("serve")
        done = subprocess.run(
            [str(serve_cli), "deploy", str(path), "--address", self.dashboard()],
            cwd=REPO, capture_output=True, text=True, timeout=180,
            # Ray 2.60 local clusters use token auth (token in ~/.ray/auth_token); the CLI must opt in.
            env={**os.environ, "RAY_AUTH_MODE": "token"},
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
        if self._ray_tmp is not None:
            shutil.rmtree(self._ray_tmp, ignore_errors=True)


# ---- load ----------------------------------------------------------------------------------


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
    status: int
    timings_ms: dict[str, float] = field(default_factory=dict)
    early_exit: bool | None = None
    error: str | None = None


async def post(client: httpx.AsyncClient, upload: Upload) -> Answer:
    """One `/v1/analyze` request, timed from before the upload is sent to the last byte of the answer."""
    started = time.perf_counter()
    try:
        response = await client.post("/v1/analyze", files=upload.files())
    except httpx.HTTPError as exc:
        return Answer(False, (time.perf_counter() - started) * 1e3, 0, error=f"{type(exc).__name__}: {exc}")
    latency = (time.perf_counter() - started) * 1e3
    if response.status_code != 200:
        return Answer(False, latency, response.status_code, error=response.text[:300])
    body = response.json()
    return Answer(True, latency, 200, body.get("timings_ms", {}), bool(body.get("early_exit")))


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "mean_ms": None}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99), "mean_ms": statistics.fmean(values)}


async def _latency(url: str, upload: Upload, requests: int, warmups: int) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S) as client:
        for _ in range(warmups):
            await post(client, upload)
        answers = [await post(client, upload) for _ in range(requests)]
    ok = [a for a in answers if a.ok]
    stages = sorted({k for a in ok for k in a.timings_ms})
    return {
        **percentiles([a.latency_ms for a in ok]),
        "requests": len(answers),
        "ok": len(ok),
        "errors": [f"{a.status}: {a.error}" for a in answers if not a.ok][:5],
        "early_exits": sum(bool(a.early_exit) for a in ok),
        "latencies_ms": [round(a.latency_ms, 1) for a in answers],
        "timings_ms_mean": {s: statistics.fmean(a.timings_ms[s] for a in ok if s in a.timings_ms) for s in stages},
    }


def latency(url: str, upload: Upload, requests: int, warmups: int = 2) -> dict[str, Any]:
    """Concurrency 1: `warmups` untimed requests, then `requests` timed ones back to back."""
    return asyncio.run(_latency(url, upload, requests, warmups))


async def _paired(url: str, upload: Upload, pairs: int, local: dict[str, Callable[[], float]]) -> dict[str, Any]:
    local_ms: dict[str, list[float]] = {name: [] for name in local}
    answers: list[Answer] = []
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S) as client:
        for run in local.values():  # one warm-up round
            run()
        await post(client, upload)
        # each round runs every side once; the order rotates, so no side always follows the same one
        sides = [*local, None]  # None: the served request
        for k in range(pairs):
            for side in sides[k % len(sides):] + sides[: k % len(sides)]:
                if side is None:
                    answers.append(await post(client, upload))
                else:
                    local_ms[side].append(local[side]())
    ok = [a.ok for a in answers]
    served_p50 = statistics.median([a.latency_ms for a in answers if a.ok]) if any(ok) else None
    local_p50 = {name: statistics.median(values) if values else None for name, values in local_ms.items()}
    in_process_p50 = local_p50.get("in_process")
    return {
        "pairs": pairs,
        "ok": sum(ok),
        "errors": [f"{a.status}: {a.error}" for a in answers if not a.ok][:5],
        "early_exits": sum(bool(a.early_exit) for a in answers if a.ok),
        "served_p50_ms": served_p50,
        "in_process_p50_ms": in_process_p50,
        "ratio_of_p50s": served_p50 / in_process_p50 if served_p50 and in_process_p50 else None,
        "local_p50_ms": local_p50,
        "served_ms": [round(a.latency_ms, 1) for a in answers],
        "local_ms": {name: [round(v, 1) for v in values] for name, values in local_ms.items()},
    }


def paired(url: str, upload: Upload, pairs: int, local: dict[str, Callable[[], float]]) -> dict[str, Any]:
    """Served latency measured in alternation with local measurements: `pairs` rounds of each, interleaved.

    `local` maps a name to a call that runs something once in this process and returns its wall
    time in ms; "in_process" (the pipeline without Ray) gives `in_process_p50_ms` and the ratio.
    This machine's speed drifts by tens of percent within an hour, so two medians taken minutes
    apart can differ by more than serving costs; taken in alternation, every side sees the same machine.
    """
    return asyncio.run(_paired(url, upload, pairs, local))


async def _throughput(url: str, upload: Upload, concurrency: int, max_requests: int, window_s: float) -> dict[str, Any]:
    answers: list[Answer] = []
    issued = 0
    started = time.perf_counter()
    deadline = started + window_s

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal issued
        while issued < max_requests and time.perf_counter() < deadline:
            issued += 1
            answers.append(await post(client, upload))

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ok = [a for a in answers if a.ok]
    return {
        "concurrency": concurrency,
        "clips_per_min": len(ok) / elapsed * 60.0 if elapsed > 0 else None,
        "requests": len(answers),
        "ok": len(ok),
        "elapsed_s": round(elapsed, 2),
        "p50_ms": percentiles([a.latency_ms for a in ok])["p50_ms"],
        "errors": [f"{a.status}: {a.error}" for a in answers if not a.ok][:5],
    }


def throughput(url: str, upload: Upload, concurrency: int, max_requests: int, window_s: float) -> dict[str, Any]:
    """`concurrency` clients sending back to back until `max_requests` are sent or `window_s` has passed.

    Requests in flight at the end of the window are awaited and counted; clips/minute is the
    successful answers over the wall time from the first request to the last answer.
    """
    return asyncio.run(_throughput(url, upload, concurrency, max_requests, window_s))


def wait_for_early_exit(url: str, upload: Upload, expected: bool, timeout_s: float = 180.0) -> bool:
    """After a `serve deploy` of new thresholds: send requests until answers show `expected` early exits.

    `reconfigure` is applied asynchronously after `serve deploy` returns, so the first requests
    may still meet the old thresholds.
    """

    async def poll() -> bool:
        deadline = time.perf_counter() + timeout_s
        async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S) as client:
            while time.perf_counter() < deadline:
                answer = await post(client, upload)
                if answer.ok and answer.early_exit == expected:
                    return True
                await asyncio.sleep(1.0)
        return False

    return asyncio.run(poll())
