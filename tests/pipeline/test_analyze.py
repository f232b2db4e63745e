"""`pipeline.analyze.analyze` over fake stage callables: order, concurrency, routing, failures, early exit."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from media.clip import ClipMeta, Hotspot, Keyframe
from media.errors import UnusableMediaError
from pipeline.analyze import Analysis, StageCalls, analyze
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

CLIP = object()  # what decode hands every later stage: analyze must pass it on untouched
UPLOAD = b"upload bytes"
PINS = {"FastTriage": "t-pin", "CompressionResilient": "v-pin", "AVAlignment": "a-pin", "Fusion": "f-pin"}


class LostReplica(Exception):
    """Stands in for the served graph's "replica died" error (a `fatal` one)."""


class Wrapped(Exception):
    """Serve's wrapper: the replica's exception is in `.cause`."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__("wrapped")
        self.cause = cause


class MotionHandle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def info(deployment: str) -> ModelInfo:
    return ModelInfo(deployment, f"{deployment.lower()}/v7", True)


def features() -> np.ndarray:
    return np.ones(3, np.float32)


class FakeStages:
    """Every stage records (name, arguments) and answers a small hand-built result."""

    def __init__(
        self,
        kind: str = "video",
        has_audio: bool = True,
        n_frames: int = 6,
        early_exit: str | None = None,
        fail: dict[str, BaseException] | None = None,
        visual_status: str = "ok",
        audio_status: str = "ok",
        av_beside: bool = False,
    ) -> None:
        self.meta = ClipMeta(
            kind=kind, duration_s=2.0, native_fps=10.0 if kind == "video" else None, width=64 if kind != "audio" else 0,
            height=48 if kind != "audio" else 0, rotation=0, has_audio=has_audio, has_video=kind != "audio",
            face_coverage=1.0, container="mp4", n_frames=n_frames,
        )
        self.n_frames = n_frames
        self.early_exit = early_exit
        self.fail = fail or {}
        self.visual_status = visual_status
        self.audio_status = audio_status
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.handles: list[MotionHandle] = []
        self.frame_scores = np.linspace(0.1, 0.9, n_frames).astype(np.float32)
        self.decoder_info = info("MediaDecoder")
        self.results: dict[str, Any] = {}
        # av_beside: keyframes waits until av has started; a sequential analyze would hang.
        self.av_started = asyncio.Event() if av_beside else None

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def args(self, name: str) -> tuple[Any, ...]:
        (found,) = [a for n, a in self.calls if n == name]
        return found

    def _maybe_fail(self, name: str) -> None:
        if name in self.fail:
            raise self.fail[name]

    async def decode(self, upload: Any) -> Decoded:
        self.calls.append(("decode", (upload,)))
        self._maybe_fail("decode")
        return Decoded(meta=self.meta, n_frames=self.n_frames, clip=CLIP, model=self.decoder_info)

    def start_motion(self, clip: Any) -> MotionHandle:
        self.calls.append(("start_motion", (clip,)))
        handle = MotionHandle()
        self.handles.append(handle)
        return handle

    async def triage(self, clip: Any, pin: str | None) -> TriageResult:
        self.calls.append(("triage", (clip, pin)))
        self._maybe_fail("triage")
        p = {"fake": 0.995, "real": 0.005, None: 0.5}[self.early_exit]
        branch = BranchResult("triage", "ok", info("FastTriage"), score=p, features=features())
        result = TriageResult(branch, self.frame_scores, self.early_exit)
        self.results["triage"] = result
        return result

    async def keyframes(self, clip: Any, frame_scores: np.ndarray, motion: Any) -> KeyframeResult:
        self.calls.append(("keyframes", (clip, frame_scores, motion)))
        if self.av_started is not None:
            await asyncio.wait_for(self.av_started.wait(), timeout=2.0)
        self._maybe_fail("keyframes")
        result = KeyframeResult([Keyframe(1, 0.1, 0.3)], [Hotspot(0.0, 0.2, 0.7)], info("KeyframeSelector"))
        self.results["keyframes"] = result
        return result

    async def visual(self, clip: Any, kf: KeyframeResult | None, pin: str | None) -> BranchResult:
        self.calls.append(("visual", (clip, kf, pin)))
        self._maybe_fail("visual")
        if self.visual_status != "ok":
            result = BranchResult("visual", self.visual_status, info("CompressionResilient"), reason="nothing to see")
        else:
            result = BranchResult("visual", "ok", info("CompressionResilient"), score=0.6, features=features())
        self.results["visual"] = result
        return result

    async def av(self, clip: Any, pin: str | None) -> AVResult:
        self.calls.append(("av", (clip, pin)))
        if self.av_started is not None:
            self.av_started.set()
        await asyncio.sleep(0)
        self._maybe_fail("av")
        av_info = info("AVAlignment")
        if self.audio_status != "ok":
            result = AVResult(
                BranchResult("av", "skipped", av_info, reason="no audio"),
                BranchResult("audio", "skipped", av_info, reason="no audio"),
            )
        else:
            result = AVResult(
                BranchResult("av", "ok", av_info, score=0.2, features=features()),
                BranchResult("audio", "ok", av_info, score=0.3, features=features()),
            )
        self.results["av"] = result
        return result

    async def fuse(self, branches: list[BranchResult], pin: str | None) -> FusionResult:
        self.calls.append(("fuse", (branches, pin)))
        self._maybe_fail("fuse")
        result = FusionResult(0.42, info("Fusion"), gate_weights={b.modality: 0.25 for b in branches})
        self.results["fuse"] = result
        return result

    def stage_calls(self, with_motion: bool = True) -> StageCalls:
        return StageCalls(
            self.decode, self.triage, self.keyframes, self.visual, self.av, self.fuse,
            start_motion=self.start_motion if with_motion else None,
        )


def run(stages: FakeStages, with_motion: bool = True, progress: list[str] | None = None, **options: Any) -> Analysis:
    async def report(name: str) -> None:
        assert progress is not None
        progress.append(name)

    return asyncio.run(
        analyze(UPLOAD, stages.stage_calls(with_motion), progress=report if progress is not None else None, **options)
    )


# ---- order and data flow ---------------------------------------------------------------------


def test_video_runs_every_stage_in_graph_order_and_passes_results_on() -> None:
    stages = FakeStages()
    progress: list[str] = []
    result = run(stages, progress=progress)

    names = stages.names()
    assert names[:3] == ["decode", "start_motion", "triage"]
    assert names.index("keyframes") < names.index("visual") < names.index("fuse")
    assert names.index("av") < names.index("fuse")
    assert sorted(names) == sorted(["decode", "start_motion", "triage", "keyframes", "visual", "av", "fuse"])
    assert progress == ["triage", "keyframes", "branches", "fusion"]

    assert stages.args("decode") == (UPLOAD,)
    assert stages.args("start_motion") == (CLIP,)
    clip, frame_scores, motion = stages.args("keyframes")
    assert clip is CLIP and frame_scores is stages.frame_scores and motion is stages.handles[0]
    assert not stages.handles[0].cancelled
    clip, kf, _ = stages.args("visual")
    assert clip is CLIP and kf is stages.results["keyframes"]
    assert stages.args("av")[0] is CLIP

    branches, _ = stages.args("fuse")
    av = stages.results["av"]
    assert branches == [stages.results["triage"].branch, stages.results["visual"], av.av, av.audio]

    assert result.triage is stages.results["triage"]
    assert result.keyframes is stages.results["keyframes"]
    assert result.visual is stages.results["visual"]
    assert result.av is av
    assert result.fused is stages.results["fuse"]
    assert result.failures == {}
    assert not result.early_exit
    assert result.meta is stages.meta and result.n_frames == stages.n_frames
    assert set(result.timings_ms) == {"decode", "triage", "keyframes", "visual", "av", "fusion", "total"}


def test_av_runs_beside_keyframes_and_visual() -> None:
    """keyframes waits for av to start: if analyze awaited the visual chain before starting av, it would time out."""
    stages = FakeStages(av_beside=True)
    result = run(stages)
    assert result.failures == {}
    assert result.fused is not None
    assert stages.names().index("av") < stages.names().index("visual")


def test_models_lists_the_model_info_of_every_stage_that_ran() -> None:
    stages = FakeStages()
    result = run(stages)
    assert result.models == {
        "MediaDecoder": stages.decoder_info,
        "FastTriage": stages.results["triage"].branch.model,
        "KeyframeSelector": stages.results["keyframes"].model,
        "CompressionResilient": stages.results["visual"].model,
        "AVAlignment": stages.results["av"].av.model,
        "Fusion": stages.results["fuse"].model,
    }
    for name, model in result.models.items():
        assert model.deployment == name


def test_without_start_motion_keyframes_gets_none() -> None:
    stages = FakeStages()
    run(stages, with_motion=False)
    assert "start_motion" not in stages.names()
    assert stages.args("keyframes")[2] is None


def test_single_frame_video_starts_no_motion() -> None:
    stages = FakeStages(n_frames=1)
    run(stages)
    assert "start_motion" not in stages.names()
    assert stages.args("keyframes")[2] is None


def test_video_without_audio_runs_no_av() -> None:
    stages = FakeStages(has_audio=False)
    progress: list[str] = []
    result = run(stages, progress=progress)
    assert "av" not in stages.names()
    assert result.av is None
    assert "AVAlignment" not in result.models
    assert stages.args("fuse")[0] == [stages.results["triage"].branch, stages.results["visual"]]
    assert progress == ["triage", "keyframes", "branches", "fusion"]


def test_image_skips_triage_keyframes_and_av() -> None:
    stages = FakeStages(kind="image", has_audio=False, n_frames=1)
    progress: list[str] = []
    result = run(stages, progress=progress)
    assert stages.names() == ["decode", "visual", "fuse"]
    assert stages.args("visual")[1] is None  # no keyframes for an image
    assert stages.args("fuse")[0] == [stages.results["visual"]]
    assert progress == ["branches", "fusion"]
    assert result.triage is None and result.keyframes is None and result.av is None
    assert set(result.models) == {"MediaDecoder", "CompressionResilient", "Fusion"}


def test_image_with_an_audio_stream_still_skips_av() -> None:
    stages = FakeStages(kind="image", has_audio=True, n_frames=1)
    run(stages)
    assert stages.names() == ["decode", "visual", "fuse"]


def test_audio_only_skips_triage_and_visual() -> None:
    stages = FakeStages(kind="audio", has_audio=True, n_frames=0)
    progress: list[str] = []
    result = run(stages, progress=progress)
    assert stages.names() == ["decode", "av", "fuse"]
    av = stages.results["av"]
    assert stages.args("fuse")[0] == [av.av, av.audio]
    assert progress == ["branches", "fusion"]
    assert result.triage is None and result.visual is None and result.keyframes is None
    assert set(result.models) == {"MediaDecoder", "AVAlignment", "Fusion"}


# ---- pins ------------------------------------------------------------------------------------


def test_pins_reach_their_own_stage() -> None:
    stages = FakeStages()
    run(stages, pins=PINS)
    assert stages.args("triage")[1] == "t-pin"
    assert stages.args("visual")[2] == "v-pin"
    assert stages.args("av")[1] == "a-pin"
    assert stages.args("fuse")[1] == "f-pin"


def test_image_pin_reaches_visual_and_missing_pins_are_none() -> None:
    stages = FakeStages(kind="image", has_audio=False, n_frames=1)
    run(stages, pins={"CompressionResilient": "v-pin"})
    assert stages.args("visual")[2] == "v-pin"
    assert stages.args("fuse")[1] is None


def test_no_pins_passes_none_everywhere() -> None:
    stages = FakeStages()
    run(stages)
    assert stages.args("triage")[1] is None
    assert stages.args("visual")[2] is None
    assert stages.args("av")[1] is None
    assert stages.args("fuse")[1] is None


# ---- early exit ------------------------------------------------------------------------------


@pytest.mark.parametrize("settled", ["fake", "real"])
def test_early_exit_stops_after_triage_and_cancels_motion(settled: str) -> None:
    stages = FakeStages(early_exit=settled)
    progress: list[str] = []
    result = run(stages, progress=progress)
    assert stages.names() == ["decode", "start_motion", "triage"]
    assert stages.handles[0].cancelled
    assert progress == ["triage"]
    assert result.early_exit
    assert result.keyframes is None and result.visual is None and result.av is None and result.fused is None
    assert set(result.models) == {"MediaDecoder", "FastTriage"}
    assert "total" in result.timings_ms


def test_early_exit_ignored_when_not_honoured() -> None:
    stages = FakeStages(early_exit="fake")
    result = run(stages, honour_early_exit=False)
    assert sorted(stages.names()) == sorted(["decode", "start_motion", "triage", "keyframes", "visual", "av", "fuse"])
    assert not stages.handles[0].cancelled
    assert stages.args("keyframes")[2] is stages.handles[0]
    assert result.early_exit  # still reported: triage did settle it
    assert result.fused is not None


def test_triage_error_cancels_motion_and_propagates() -> None:
    stages = FakeStages(fail={"triage": ValueError("triage broke")})
    with pytest.raises(ValueError, match="triage broke"):
        run(stages)
    assert stages.handles[0].cancelled
    assert "keyframes" not in stages.names()


def test_fuse_false_stops_before_fusion() -> None:
    stages = FakeStages()
    progress: list[str] = []
    result = run(stages, progress=progress, fuse=False)
    assert "fuse" not in stages.names()
    assert result.fused is None
    assert result.visual is not None and result.av is not None
    assert "Fusion" not in result.models
    assert progress == ["triage", "keyframes", "branches"]
    assert "fusion" not in result.timings_ms


def test_fuse_false_with_early_exit_disabled_runs_every_branch() -> None:
    """What training uses: every branch, no fusion."""
    stages = FakeStages(early_exit="real")
    result = run(stages, honour_early_exit=False, fuse=False)
    assert {"keyframes", "visual", "av"} <= set(stages.names())
    assert "fuse" not in stages.names()
    assert result.visual is not None and result.av is not None and result.fused is None


# ---- failures --------------------------------------------------------------------------------


def test_failed_visual_branch_is_reported_and_the_rest_still_fuse() -> None:
    stages = FakeStages(fail={"visual": ValueError("bad crops")})
    result = run(stages)
    assert result.failures == {"visual": "ValueError: bad crops"}
    assert result.visual is None and result.keyframes is None
    assert "CompressionResilient" not in result.models
    av = stages.results["av"]
    assert stages.args("fuse")[0] == [stages.results["triage"].branch, av.av, av.audio]
    assert result.fused is stages.results["fuse"]


def test_a_failure_reported_to_callers_carries_no_server_paths_or_traceback() -> None:
    error = RuntimeError("no weights at /srv/app/weights/fusion/v9/model.safetensors\nTraceback (most recent call last):")
    result = run(FakeStages(fail={"visual": error}))
    assert result.failures == {"visual": "RuntimeError: no weights at <path>"}


def test_failed_keyframes_fail_the_visual_branch_without_calling_visual() -> None:
    stages = FakeStages(fail={"keyframes": RuntimeError("flow died")})
    result = run(stages)
    assert "visual" not in stages.names()
    assert result.failures == {"visual": "RuntimeError: flow died"}
    assert result.av is not None and result.fused is not None


def test_failed_av_branch_is_reported_and_the_rest_still_fuse() -> None:
    stages = FakeStages(fail={"av": OSError("wav2vec")})
    result = run(stages)
    assert result.failures == {"av": "OSError: wav2vec"}
    assert result.av is None and "AVAlignment" not in result.models
    assert stages.args("fuse")[0] == [stages.results["triage"].branch, stages.results["visual"]]
    assert result.fused is not None


def test_wrapped_failure_reports_the_original_cause() -> None:
    stages = FakeStages(fail={"av": Wrapped(KeyError("lips"))})
    result = run(stages)
    assert result.failures == {"av": "KeyError: 'lips'"}


def test_unknown_version_propagates() -> None:
    stages = FakeStages(fail={"visual": UnknownVersionError("no v9")})
    with pytest.raises(UnknownVersionError, match="no v9"):
        run(stages, pins={"CompressionResilient": "v9"})
    assert "fuse" not in stages.names()


@pytest.mark.parametrize("branch", ["visual", "av"])
def test_fatal_error_types_propagate(branch: str) -> None:
    stages = FakeStages(fail={branch: LostReplica("gone")})
    with pytest.raises(LostReplica, match="gone"):
        run(stages, fatal=(LostReplica,))
    assert "fuse" not in stages.names()


def test_an_error_type_not_declared_fatal_is_a_failed_branch() -> None:
    stages = FakeStages(fail={"av": LostReplica("gone")})
    result = run(stages, fatal=(UnicodeError,))
    assert result.failures == {"av": "LostReplica: gone"}


def test_no_usable_branch_raises_unusable_media() -> None:
    stages = FakeStages(kind="image", has_audio=False, n_frames=1, visual_status="skipped")
    with pytest.raises(UnusableMediaError, match="nothing to analyse"):
        run(stages)
    assert "fuse" not in stages.names()


def test_audio_only_with_nothing_usable_raises_unusable_media() -> None:
    stages = FakeStages(kind="audio", has_audio=True, n_frames=0, audio_status="skipped")
    with pytest.raises(UnusableMediaError):
        run(stages)
    assert "fuse" not in stages.names()


def test_every_branch_failed_raises_runtime_error() -> None:
    stages = FakeStages(kind="image", has_audio=False, n_frames=1, fail={"visual": ValueError("bad image")})
    with pytest.raises(RuntimeError, match="every branch failed.*bad image"):
        run(stages)
    assert "fuse" not in stages.names()


def test_every_branch_failed_audio_only() -> None:
    stages = FakeStages(kind="audio", has_audio=True, n_frames=0, fail={"av": ValueError("no decoder")})
    with pytest.raises(RuntimeError, match="no decoder"):
        run(stages)


def test_a_decode_error_propagates_before_any_stage() -> None:
    stages = FakeStages(fail={"decode": UnusableMediaError("zero frames")})
    progress: list[str] = []
    with pytest.raises(UnusableMediaError, match="zero frames"):
        run(stages, progress=progress)
    assert stages.names() == ["decode"]
    assert progress == []


def test_early_exit_with_a_motion_handle_that_cannot_be_cancelled() -> None:
    stages = FakeStages(early_exit="real")
    calls = stages.stage_calls()
    calls.start_motion = lambda clip: object()  # e.g. an already finished result: nothing to cancel
    result = asyncio.run(analyze(UPLOAD, calls))
    assert result.early_exit and result.fused is None
