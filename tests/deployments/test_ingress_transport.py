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
