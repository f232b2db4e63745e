"""Which replica, node and GPUs answered: lets operators and tests see packing and rollouts. No torch here."""

from __future__ import annotations

import functools
from typing import Any


def replica_placement() -> dict[str, Any]:
    """Which replica, node and GPUs this process is: lets operators and tests see packing and rollouts."""
    return dict(_placement())


@functools.cache
def _placement() -> tuple[tuple[str, Any], ...]:
    import ray
    from ray import serve

    if not ray.is_initialized():  # get_runtime_context() would start a local Ray
        return ()
    try:
        ctx = ray.get_runtime_context()
        return (
            ("replica_id", serve.get_replica_context().replica_id.unique_id),
            ("node_id", ctx.get_node_id()),
            ("gpu_ids", [str(g) for g in ctx.get_accelerator_ids().get("GPU", [])]),
        )
    except Exception:  # outside a Serve replica (in-process use, tests)
        return ()
