"""`analyze`: the stages in the graph's order over injectable stage callables.

The same function orchestrates the served graph (callables that call deployment handles and
return their responses unawaited) and the in-process pipeline of training, the benchmark and
the tests (callables that run `pipeline`'s stage functions on loaded models). Order:

    decode -> [video] triage (motion beside it) -> early exit?
           -> [video] keyframes -> visual   |   [image] visual
           -> [audio and not image] av (beside keyframes + visual)
           -> fuse -> (verdict: `pipeline.verdict.respond`)
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from media.clip import ClipMeta
from media.errors import UnusableMediaError
from pipeline.results import (
    AVResult,
    BranchResult,
    Decoded,
    FusionResult,
    KeyframeResult,
    ModelInfo,
    TriageResult,
    UnknownVersionError,
)

logger = logging.getLogger(__name__)
# Branch codes that mean "nothing to judge here" (an abstention), not a failure: where every branch abstained,
# there is no verdict and no error.
ABSTAINED = ("no_face", "no_speech", "out_of_distribution", "low_quality")

Progress = Callable[[str], Awaitable[None]]


@dataclass
class StageCalls:
    """The stages as awaitables; `clip` is whatever `decode` put in `Decoded.clip`.

    `start_motion(clip)` (optional) starts the keyframes' optical flow beside triage and returns
    a handle that `keyframes` receives (and that is cancelled, if it can be, on early exit);
    without it `keyframes` gets None and computes the motion itself.
    """

    decode: Callable[[Any], Awaitable[Decoded]]
    triage: Callable[[Any, str | None], Awaitable[TriageResult]]
    keyframes: Callable[[Any, np.ndarray, Any], Awaitable[KeyframeResult]]
    visual: Callable[[Any, KeyframeResult | None, str | None], Awaitable[BranchResult]]
    av: Callable[[Any, str | None], Awaitable[AVResult]]
    fuse: Callable[[list[BranchResult], str | None], Awaitable[FusionResult]]
    start_motion: Callable[[Any], Any] | None = None


@dataclass
class Analysis:
    """Every stage's answer for one upload; `pipeline.verdict.respond` turns it into the API's response."""

    meta: ClipMeta
    n_frames: int
    triage: TriageResult | None = None
    keyframes: KeyframeResult | None = None
    visual: BranchResult | None = None
    av: AVResult | None = None
    fused: FusionResult | None = None
    failures: dict[str, str] = field(default_factory=dict)  # branch -> "ErrorType: message"
    models: dict[str, ModelInfo] = field(default_factory=dict)  # deployment -> weights that answered
    timings_ms: dict[str, float] = field(default_factory=dict)
    # With `analyze(keep_clip=True)`: the decoded clip as the stages got it (served: MediaDecoder's `[ObjectRef]`),
    # for what is asked of the same frames afterwards (the face crops a heat-map explains); never in the response.
    clip: Any = field(default=None, repr=False, compare=False)

    @property
    def early_exit(self) -> bool:
        return self.triage is not None and self.triage.early_exit is not None

    def branches(self) -> list[BranchResult]:
        """Every branch that reported (ok or skipped): what Fusion is given."""
        found = [self.triage.branch if self.triage else None, self.visual]
        if self.av is not None:
            found += [self.av.av, self.av.audio]
        return [b for b in found if b is not None]


async def _timed(timings: dict[str, float], stage: str, call: Awaitable[Any]) -> Any:
    started = time.perf_counter()
    try:
        return await call
    finally:
        timings[stage] = round((time.perf_counter() - started) * 1e3, 2)


def _cancel(handle: Any) -> None:
    cancel = getattr(handle, "cancel", None)
    if cancel is not None:
        cancel()


def _cause(exc: BaseException) -> BaseException:
    """Serve wraps a replica's exception; `cause` keeps the original."""
    return getattr(exc, "cause", None) or exc


_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\s\\/:'\"()]+){2,}")


def public_error(exc: BaseException, max_chars: int = 300) -> str:
    """`Type: message` of the original exception as a caller may see it: its first line, server paths
    replaced by `<path>`, at most `max_chars` (the log keeps the whole traceback)."""
    cause = _cause(exc)
    lines = str(cause).strip().splitlines()
    text = _PATH.sub("<path>", lines[0] if lines else "")
    return f"{type(cause).__name__}: {text}"[:max_chars]


async def analyze(
    upload: Any,
    calls: StageCalls,
    *,
    pins: dict[str, str] | None = None,
    progress: Progress | None = None,
    fatal: tuple[type[BaseException], ...] = (),
    honour_early_exit: bool = True,
    fuse: bool = True,
    keep_clip: bool = False,
) -> Analysis:
    """Run the stages on one upload.

    `pins`: deployment name -> weights version for this request. `fatal`: branch errors that
    abort the analysis instead of being reported as a failed branch (a bad pin always is; the
    served graph adds lost replicas, so the caller can re-run). `honour_early_exit=False` runs
    every branch even when triage settles the clip, and `fuse=False` stops before fusion
    (training uses both). `keep_clip` keeps the decoded clip on the answer (`Analysis.clip`). When every branch abstained for want of a face the analysis ends
    without fusion (`pipeline.verdict` answers `uncertain`); when no branch had any input at all
    it raises `UnusableMediaError`, and `RuntimeError` when every branch failed.
    """
    pins = pins or {}
    started = time.perf_counter()

    async def stage(name: str) -> None:
        if progress is not None:
            await progress(name)

    timings: dict[str, float] = {}
    decoded: Decoded = await _timed(timings, "decode", calls.decode(upload))
    meta, clip = decoded.meta, decoded.clip
    result = Analysis(meta, decoded.n_frames, timings_ms=timings, clip=clip if keep_clip else None)
    if decoded.model is not None:
        result.models["MediaDecoder"] = decoded.model

    motion = None
    if meta.kind == "video":
        await stage("triage")
        if decoded.n_frames > 1 and calls.start_motion is not None:
            # Keyframe selection's optical flow needs no triage scores: it runs beside triage.
            motion = calls.start_motion(clip)
        try:
            result.triage = await _timed(timings, "triage", calls.triage(clip, pins.get("FastTriage")))
        except BaseException:
            _cancel(motion)
            raise
        result.models["FastTriage"] = result.triage.branch.model
    if result.early_exit and honour_early_exit:
        _cancel(motion)  # settled by triage: no keyframes
        timings["total"] = round((time.perf_counter() - started) * 1e3, 2)
        return result

    branch_calls: dict[str, Awaitable[Any]] = {}
    await stage("keyframes" if meta.kind == "video" else "branches")
    if meta.kind == "video" and decoded.n_frames > 0:
        # Without triage's scores (it abstained) keyframes are chosen by motion and time alone.
        triaged = result.triage.branch.status == "ok"
        frame_scores = result.triage.frame_scores if triaged else np.zeros(decoded.n_frames, np.float32)

        async def keyframes_then_visual() -> tuple[KeyframeResult, BranchResult]:
            kf = await _timed(timings, "keyframes", calls.keyframes(clip, frame_scores, motion))
            await stage("branches")
            vis = await _timed(timings, "visual", calls.visual(clip, kf, pins.get("CompressionResilient")))
            return kf, vis

        branch_calls["visual"] = keyframes_then_visual()
    elif meta.kind == "image":
        branch_calls["visual"] = _timed(timings, "visual", calls.visual(clip, None, pins.get("CompressionResilient")))
    if meta.has_audio and meta.kind != "image":
        branch_calls["av"] = _timed(timings, "av", calls.av(clip, pins.get("AVAlignment")))
    answers = await asyncio.gather(*branch_calls.values(), return_exceptions=True)
    for name, answer in zip(branch_calls, answers):
        if isinstance(answer, (UnknownVersionError, *fatal)):
            raise answer
        if isinstance(answer, BaseException):
            logger.error("%s branch failed", name, exc_info=answer)
            result.failures[name] = public_error(answer)
        elif name == "visual":
            result.keyframes, result.visual = answer if isinstance(answer, tuple) else (None, answer)
        else:
            result.av = answer
    if result.keyframes is not None:
        result.models["KeyframeSelector"] = result.keyframes.model
    if result.visual is not None:
        result.models["CompressionResilient"] = result.visual.model
    if result.av is not None:
        result.models["AVAlignment"] = result.av.av.model

    if fuse:
        branches = result.branches()
        if not any(b.status == "ok" for b in branches):
            if any(b.code in ABSTAINED for b in branches):
                # Decodable, but nothing any model can judge (a faceless photo, music): no verdict, not an error.
                timings["total"] = round((time.perf_counter() - started) * 1e3, 2)
                return result
            raise _unusable(result.failures, branches)
        await stage("fusion")
        result.fused = await _timed(timings, "fusion", calls.fuse(branches, pins.get("Fusion")))
        result.models["Fusion"] = result.fused.model
    timings["total"] = round((time.perf_counter() - started) * 1e3, 2)
    return result


def _unusable(failures: dict[str, str], branches: list[BranchResult]) -> Exception:
    reasons = [f"{k}: {v}" for k, v in failures.items()] + [f"{b.modality}: {b.reason}" for b in branches]
    if failures:
        return RuntimeError("every branch failed: " + "; ".join(reasons))
    return UnusableMediaError("nothing to analyse: " + "; ".join(reasons) if reasons else "nothing to analyse")
