"""The ingress calls every deployment by reference (Ray's object store), whatever Serve's transport default.

With `RAY_SERVE_THROUGHPUT_OPTIMIZED=1`, which Ray's docs recommend for throughput, Serve sends
handle calls inline over gRPC unless told otherwise, and gRPC refuses messages over 4 MiB: every
request failed with RESOURCE_EXHAUSTED on the 7.5 MB decoded clip (seen with `serve run`).
"""

from __future__ import annotations

from deployments.ingress import SpectraShieldIngress

NAMES = ("decoder", "triage", "keyframes", "compression", "av", "fusion", "jobs", "gate")


class FakeHandle:
    def __init__(self, name: str, options: dict | None = None) -> None:
        self.name, self.applied = name, options or {}

    def options(self, **options) -> FakeHandle:
        return FakeHandle(self.name, {**self.applied, **options})


def test_every_handle_the_ingress_keeps_passes_by_reference() -> None:
    # the user class under Serve's ASGI wrapper (whose __init__ is a coroutine that starts the app)
    user_class = SpectraShieldIngress.func_or_class.__mro__[1]
    ingress = user_class.__new__(user_class)
    user_class.__init__(ingress, *(FakeHandle(name) for name in NAMES))
    kept = [ingress.jobs, ingress.gate, *ingress.orchestrator.handles.values()]
    assert {h.name for h in kept} == set(NAMES)
    assert all(h.applied == {"_by_reference": True} for h in kept)
    assert ingress.orchestrator.handles["MediaDecoder"].name == "decoder"  # wired in graph.py's order


def test_serve_status_is_asked_one_call_at_a_time(monkeypatch) -> None:
    """Ray's `serve.status()` is not thread-safe (its ServeInstanceDetails races on cloudpickle's registry;
    seen: /v1/models 500 under concurrent probes), so concurrent probes share one call at a time."""
    import asyncio
    import threading
    import time

    user_class = SpectraShieldIngress.func_or_class.__mro__[1]
    ingress = user_class.__new__(user_class)
    user_class.__init__(ingress, *(FakeHandle(name) for name in NAMES))
    inside, most, calls, lock = [0], [0], [0], threading.Lock()

    def status() -> str:
        with lock:
            inside[0] += 1
            calls[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.05)
        with lock:
            inside[0] -= 1
        return f"status {calls[0]}"

    names = user_class._serve_status.__globals__  # serve.ingress copied the class: its own module globals
    monkeypatch.setattr(names["serve"], "status", status)
    monkeypatch.setitem(names, "STATUS_REUSE_S", 0.0)

    async def ask_many() -> list[str]:
        return await asyncio.gather(*(ingress._serve_status() for _ in range(12)))

    answers = asyncio.run(ask_many())
    assert most[0] == 1  # never two controller calls at once
    assert calls[0] == 12 and len(set(answers)) == 12  # with no reuse window, each asks afresh

    monkeypatch.setitem(names, "STATUS_REUSE_S", 60.0)
    assert len(set(asyncio.run(ask_many()))) == 1  # within the window one answer is shared
