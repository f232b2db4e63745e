"""`@serve.batch` around a stage function: one call per weights version in a batch, one bad input fails alone."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any


@dataclass
class Failed:
    """Stands in a batch's results for one request that raised, so the others still get answers."""

    error: BaseException


def answer_batch(run_batch: Any, bundles: list[Any], *items: list[Any]) -> list[Any]:
    """Answer a `@serve.batch` batch: one `run_batch(bundle, *columns)` call per weights version in it.

    `bundles[i]` is the version request i was routed to (primary or canary); `items` are the
    request arguments column by column. When a shared call raises, each of its requests is retried
    alone, so one bad input fails only its own request (as a `Failed` in its slot).
    """
    groups: dict[int, list[int]] = {}
    for i, bundle in enumerate(bundles):
        groups.setdefault(id(bundle), []).append(i)
    answers: list[Any] = [None] * len(bundles)
    for members in groups.values():
        bundle = bundles[members[0]]
        try:
            results = run_batch(bundle, *([column[i] for i in members] for column in items))
        except Exception as exc:
            if len(members) == 1:
                results = [Failed(exc)]
            else:
                results = [answer_batch(run_batch, [bundle], *([column[i]] for column in items))[0] for i in members]
        for i, result in zip(members, results, strict=True):
            answers[i] = result
    return answers


def unwrap(result: Any) -> Any:
    """A batch slot's answer, re-raising the request's own error."""
    if isinstance(result, Failed):
        raise result.error
    return result


def in_serve_replica() -> bool:
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        serve.get_replica_context()
    except RayServeException:
        return False
    return True


async def submit(handler: Any, run_batch: Any, bundle: Any, *args: Any) -> Any:
    """One request's answer through the replica's `@serve.batch` `handler`.

    A deployment class used as a plain class (in-process tools and tests, no Serve replica) has no
    batch queue: the request then runs alone through the same `answer_batch`.
    """
    if in_serve_replica():
        return unwrap(await handler(bundle, *args))
    answers = await asyncio.to_thread(answer_batch, run_batch, [bundle], *([arg] for arg in args))
    return unwrap(answers[0])


# Fetching a decoded clip that exists takes milliseconds; one whose MediaDecoder (its owner) was on a
# node that just died can hang until the node is declared dead, past the proxy's request timeout.
CLIP_FETCH_TIMEOUT_S = 15.0


class ClipUnavailable(RuntimeError):
    """The decoded clip could not be fetched in time: its owner or its node is gone. The orchestrator
    treats this like a dead replica and re-runs the analysis once (see `orchestration.LOST_WORK`)."""


async def resolve(clip: Any, timeout_s: float = CLIP_FETCH_TIMEOUT_S) -> Any:
    """The decoded clip: MediaDecoder hands out `[ObjectRef]` (one object-store copy every branch reads);
    a deployment class used in-process may be given the clip itself."""
    if not isinstance(clip, list):
        return clip
    try:
        return await asyncio.wait_for(clip[0], timeout=timeout_s)
    except TimeoutError as exc:
        raise ClipUnavailable(f"the decoded clip was not fetched within {timeout_s:.0f} s") from exc
