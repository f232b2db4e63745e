"""A Serve instance bound beyond loopback with no API keys refuses to start; with keys or `allow_open` it starts.
And the proxy's own error answers (here: a deployment that raises, which the proxy answers itself) come
back in the API's JSON shape when Ray starts with the proxy callback, as `make serve` does.

Runs a Ray of its own in a subprocess (its own temp dir) whose proxy binds 0.0.0.0 on a free port
and deploys only the Gatekeeper, which is where the check lives, and one deployment that raises.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap

import pytest

from deployments.proxy_errors import CALLBACK, CALLBACK_ENV

pytestmark = pytest.mark.serve

SCRIPT = textwrap.dedent("""
    import json, sys
    import ray
    from ray import serve
    from deployments.keys import GatekeeperDeployment

    port, keys_db = int(sys.argv[1]), sys.argv[2]
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "0.0.0.0", "port": port})
    results = {}
    for name, user_config in (
        ("open", {}),
        ("allow_open", {"allow_open": True}),
        ("keys", {"keys_db": keys_db}),
    ):
        app = GatekeeperDeployment.options(user_config=user_config).bind()
        try:
            serve.run(app, name=name, route_prefix=None)
            results[name] = "RUNNING"
        except Exception as exc:  # noqa: BLE001 - the refusal arrives as Serve's deploy failure
            gate = serve.status().applications[name].deployments["Gatekeeper"]
            results[name] = f"{exc} | {gate.status} | {gate.message}"
    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Boom:
        async def __call__(self, request):
            raise RuntimeError("boom at /secret/path/module.py")

    serve.run(Boom.bind(), name="boom", route_prefix="/boom")
    import urllib.error, urllib.request
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/boom", timeout=30)
    except urllib.error.HTTPError as err:
        results["boom"] = {"status": err.code, "type": err.headers.get("content-type"), "body": err.read().decode()}
    print("RESULTS " + json.dumps(results), flush=True)
    serve.shutdown()
    ray.shutdown()
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="ss-bind-")
    env[CALLBACK_ENV] = CALLBACK
    tmp_path = tmp_path_factory.mktemp("bind")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(_free_port()), str(tmp_path / "keys" / "keys.sqlite")],
        capture_output=True, text=True, timeout=300, env=env, cwd=os.getcwd(),
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULTS ")]
    assert lines, f"rc {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return json.loads(lines[-1].removeprefix("RESULTS "))


def test_a_non_loopback_bind_without_keys_refuses_to_start(results: dict) -> None:
    assert "DEPLOY_FAILED" in results["open"]
    assert "refusing to start: HTTP is bound to 0.0.0.0 and no API keys are configured" in results["open"]
    assert results["allow_open"] == "RUNNING"
    assert results["keys"] == "RUNNING"


def test_the_proxys_own_errors_are_the_apis_json(results: dict) -> None:
    boom = results["boom"]
    assert boom["status"] == 500 and boom["type"] == "application/json"
    answer = json.loads(boom["body"])
    assert set(answer) == {"error", "detail", "request_id"} and answer["error"] == "internal"
    assert "/secret" not in answer["detail"] and "boom" not in answer["detail"]
