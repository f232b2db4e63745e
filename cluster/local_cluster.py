"""A multi-node Ray cluster on one machine: a head and N workers, each its own `ray start`.

Why not `ray.cluster_utils.Cluster`: its nodes live inside the calling Python process, so a
cluster cannot outlive the command that made it, and the processes it leaves after a crash
have no handle to find them by. Here every node is a `ray start --block` in a new process
session: the session id names every process of that node (raylet, agents, and the worker
processes that become replicas, which only change their process group), so a node can be
killed on its own to simulate a machine failure, and `stop` ends exactly this cluster's
processes and nothing else on the machine (never `ray stop`, which ends every local Ray).

All ports are picked free (the dashboard binds 127.0.0.1), and `RAY_TMPDIR` is a short private
directory (unix socket paths must stay under 107 characters). Token authentication is on
(`RAY_AUTH_MODE=token`, the token in `~/.ray/auth_token`, created on first start as
`ray.init()` does); clients such as `serve deploy` need `RAY_AUTH_MODE=token` too.

    python -m cluster.local_cluster start --workers 2 --num-cpus 4 [--num-gpus 1]
    python -m cluster.local_cluster stop

Linux only (process sessions are read from /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from deployments.proxy_errors import CALLBACK, CALLBACK_ENV

HOST = "127.0.0.1"
START_TIMEOUT_S = 180.0
STATE_FILE = "cluster.json"
DEFAULT_DIR = Path(tempfile.gettempdir()) / "ssc-local"  # short: it prefixes every socket path
DEFAULT_TOKEN = Path.home() / ".ray" / "auth_token"
OBJECT_STORE_BYTES = 512 * 1024 * 1024  # Ray's default (30% of RAM per node) is too much for several nodes


@dataclass(frozen=True)
class NodeSpec:
    """Logical resources one node declares; Ray schedules on these, not on the real hardware."""

    num_cpus: int = 4
    num_gpus: int = 0
    resources: dict[str, float] = field(default_factory=dict)
    object_store_bytes: int = OBJECT_STORE_BYTES


@dataclass
class LocalNode:
    """One running `ray start --block`; `pid` is also the id of the process session it leads."""

    name: str
    spec: NodeSpec
    pid: int
    log: str

    def alive(self) -> bool:
        return _pid_alive(self.pid)


@dataclass
class LocalCluster:
    """A running local cluster; its state is saved in `root/cluster.json` for `stop` from another process."""

    root: str
    gcs_port: int
    dashboard_port: int
    env: dict[str, str]  # what every node was started with; clients can use the same
    nodes: list[LocalNode] = field(default_factory=list)

    @property
    def gcs_address(self) -> str:
        return f"{HOST}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{HOST}:{self.dashboard_port}"

    @property
    def head(self) -> LocalNode:
        return self.nodes[0]

    @property
    def workers(self) -> list[LocalNode]:
        return self.nodes[1:]

    def node(self, name: str) -> LocalNode:
        found = [n for n in self.nodes if n.name == name]
        if not found:
            raise KeyError(f"no node {name!r}; nodes: {[n.name for n in self.nodes]}")
        return found[0]

    def client_env(self) -> dict[str, str]:
        """Environment for a CLI or driver process talking to this cluster (`serve deploy`, `ray status`)."""
        return {**self.env, "RAY_ADDRESS": self.gcs_address}

    def auth_headers(self) -> dict[str, str]:
        """The bearer header the dashboard's REST API (Serve, state API) wants under token auth."""
        return {"Authorization": f"Bearer {auth_token(self.env)}"}

    def add_worker(self, spec: NodeSpec, name: str | None = None, timeout_s: float = START_TIMEOUT_S) -> LocalNode:
        """Join one more node to the head, as `ray start --address` on another machine would."""
        name = name or f"worker-{len(self.nodes)}"
        args = ["--address", self.gcs_address]
        node = _start_node(Path(self.root), name, spec, args, self.env, timeout_s)
        self.nodes.append(node)
        self.save()
        return node

    def kill_node(self, name: str) -> None:
        """SIGKILL every process of one node at once: what the cluster sees when a machine dies."""
        node = self.node(name)
        _kill_session(node.pid, Path(self.root), graceful_s=0.0)
        self.nodes.remove(node)
        self.save()

    def stop(self) -> None:
        """End every process of this cluster (workers first, then the head) and delete its directory."""
        for node in reversed(self.nodes):
            _kill_session(node.pid, Path(self.root), graceful_s=10.0)
        self.nodes.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def save(self) -> None:
        (Path(self.root) / STATE_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, root: Path) -> LocalCluster:
        raw = json.loads((root / STATE_FILE).read_text())
        nodes = [LocalNode(n["name"], NodeSpec(**n["spec"]), n["pid"], n["log"]) for n in raw.pop("nodes")]
        return cls(**raw, nodes=nodes)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_cluster(
    head: NodeSpec = NodeSpec(),
    workers: list[NodeSpec] | None = None,
    root: Path | None = None,
    extra_env: Mapping[str, str] | None = None,
    timeout_s: float = START_TIMEOUT_S,
    die_with_parent: bool = False,
) -> LocalCluster:
    """Start a head (dashboard included) and one `ray start --address` per worker spec.

    `root` is created when missing (default: a fresh temp dir); `extra_env` reaches every Ray
    process, e.g. `RAY_SERVE_USE_PACK_SCHEDULING_STRATEGY=1` for the Serve controller. If any
    node fails to start, whatever did start is torn down before the error propagates.
    `die_with_parent` is for tests: a watchdog process stops the cluster once the calling
    process is gone, so a killed test run (a CI timeout) does not leave Ray running.
    """
    root = Path(root).absolute() if root else Path(tempfile.mkdtemp(prefix="ssc-"))
    root.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=str(root), RAY_AUTH_MODE="token", **(extra_env or {}))
    env.setdefault(CALLBACK_ENV, CALLBACK)  # every node's Serve proxy answers its own errors in the API's JSON
    _ensure_token(env)
    gcs_port, dashboard_port, client_port = free_ports(3)
    cluster = LocalCluster(str(root), gcs_port, dashboard_port, env)
    head_args = [
        "--head", "--port", str(gcs_port),
        "--include-dashboard", "true", "--dashboard-host", HOST, "--dashboard-port", str(dashboard_port),
        "--ray-client-server-port", str(client_port),
    ]
    try:
        cluster.nodes.append(_start_node(root, "head", head, head_args, env, timeout_s))
        cluster.save()
        if die_with_parent:
            _start_watchdog(root, os.getpid())
        for spec in workers or []:
            cluster.add_worker(spec, timeout_s=timeout_s)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _start_node(
    root: Path, name: str, spec: NodeSpec, role_args: list[str], env: dict[str, str], timeout_s: float,
) -> LocalNode:
    (agent_port,) = free_ports(1)
    command = [
        str(Path(sys.executable).with_name("ray")), "start", "--block", *role_args,
        "--node-name", name,
        "--num-cpus", str(spec.num_cpus), "--num-gpus", str(spec.num_gpus),
        "--resources", json.dumps(spec.resources),
        "--object-store-memory", str(spec.object_store_bytes),
        "--dashboard-agent-listen-port", str(agent_port),  # the default 52365 would collide between nodes
        "--min-worker-port", "0", "--max-worker-port", "0",  # random worker ports: other Rays may share the machine
        "--disable-usage-stats",
    ]
    log = root / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    node = LocalNode(name, spec, proc.pid, str(log))
    deadline = time.monotonic() + timeout_s
    while "Ray runtime started" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            _kill_session(proc.pid, root, graceful_s=0.0)
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            why = f"exited with {proc.returncode}" if proc.returncode is not None else f"not up after {timeout_s:.0f}s"
            raise RuntimeError(f"ray node {name!r} {why}:\n{tail}")
        time.sleep(0.5)
    return node


def auth_token(env: Mapping[str, str]) -> str:
    """The token Ray uses under `env`, in Ray's order: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token."""
    if env.get("RAY_AUTH_TOKEN"):
        return env["RAY_AUTH_TOKEN"].strip()
    path = Path(env["RAY_AUTH_TOKEN_PATH"]) if env.get("RAY_AUTH_TOKEN_PATH") else DEFAULT_TOKEN
    return path.read_text().strip()


def _start_watchdog(root: Path, owner: int) -> None:
    """A detached `watch` process: it stops the cluster in `root` when `owner` exits without doing so."""
    with (root / "watchdog.log").open("ab") as out:
        subprocess.Popen(
            [sys.executable, "-m", "cluster.local_cluster", "watch", "--dir", str(root), "--owner", str(owner)],
            cwd=Path(__file__).resolve().parents[1], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _watch(root: Path, owner: int) -> None:
    """Until the cluster is stopped (its state file gone), stop it as soon as `owner` has died."""
    while (root / STATE_FILE).exists():
        if not _pid_alive(owner):
            LocalCluster.load(root).stop()
            return
        time.sleep(1.0)


def _ensure_token(env: Mapping[str, str]) -> None:
    """Create ~/.ray/auth_token when no token is configured; Ray reads it from there on every node."""
    if env.get("RAY_AUTH_TOKEN") or env.get("RAY_AUTH_TOKEN_PATH"):
        return
    if not DEFAULT_TOKEN.exists():
        subprocess.run(
            [str(Path(sys.executable).with_name("ray")), "get-auth-token", "--generate"],
            env=dict(env), check=True, capture_output=True, timeout=60,
        )


def free_ports(n: int) -> list[int]:
    """n distinct ports the OS reports free now (held open together so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _session_members(sid: int, root: Path) -> list[int]:
    """Live processes of session `sid` that run with this cluster's RAY_TMPDIR (so a reused pid is never hit)."""
    marker = f"RAY_TMPDIR={root}".encode()
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getsid(int(entry)) == sid and marker in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                members.append(int(entry))
        except (ProcessLookupError, PermissionError, FileNotFoundError):
            continue
    return members


def _kill_session(sid: int, root: Path, graceful_s: float) -> None:
    """SIGTERM the node's `ray start` (it stops its children), then SIGKILL whatever of the session is left."""
    if graceful_s > 0 and sid in _session_members(sid, root):
        try:
            os.kill(sid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + graceful_s
        while _session_members(sid, root) and time.monotonic() < deadline:
            _reap(sid)
            time.sleep(0.2)
    for _ in range(3):
        members = _session_members(sid, root)
        if not members:
            break
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    _reap(sid)


def _reap(pid: int) -> None:
    """Collect the exit status when `pid` is our own child, so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cluster.local_cluster", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start a head and N workers; prints the addresses")
    start.add_argument("--workers", type=int, default=2)
    start.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of each worker")
    start.add_argument("--num-gpus", type=int, default=0, help="logical GPUs of each worker (no real GPU needed)")
    start.add_argument("--resources", type=json.loads, default={}, help='custom resources of each worker, JSON')
    start.add_argument("--head-cpus", type=int, default=4)
    start.add_argument("--head-gpus", type=int, default=0)
    start.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra env for every node")
    stop = sub.add_parser("stop", help="stop the cluster saved in --dir and delete the directory")
    watch = sub.add_parser("watch", help="stop the cluster in --dir once process --owner exits (used by tests)")
    watch.add_argument("--owner", type=int, required=True)
    for p in (start, stop, watch):
        p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"state and RAY_TMPDIR (default {DEFAULT_DIR})")
    args = parser.parse_args(argv)

    if args.command == "watch":
        _watch(args.dir, args.owner)
        return

    if args.command == "stop":
        if not (args.dir / STATE_FILE).exists():
            sys.exit(f"no cluster state in {args.dir}")
        LocalCluster.load(args.dir).stop()
        print(f"stopped; removed {args.dir}")
        return

    if (args.dir / STATE_FILE).exists() and any(n.alive() for n in LocalCluster.load(args.dir).nodes):
        sys.exit(f"a cluster is already running from {args.dir}; stop it first")
    worker = NodeSpec(args.num_cpus, args.num_gpus, args.resources)
    extra_env = dict(kv.split("=", 1) for kv in args.env)
    cluster = start_cluster(
        NodeSpec(args.head_cpus, args.head_gpus), [worker] * args.workers, args.dir, extra_env,
    )
    print(f"GCS address:  {cluster.gcs_address}    (ray.init(address=...), ray start --address=...)")
    print(f"Dashboard:    {cluster.dashboard_url}    (serve deploy --address ...)")
    print(f"Nodes:        {', '.join(f'{n.name} (pid {n.pid})' for n in cluster.nodes)}; logs in {cluster.root}")
    print("Clients need: export RAY_AUTH_MODE=token")
    print(f"Stop with:    python -m cluster.local_cluster stop --dir {cluster.root}")


if __name__ == "__main__":
    main()
