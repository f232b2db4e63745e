"""The verdict stage: `decide` and `respond` on hand-built `Analysis` objects."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from media.clip import ClipMeta, Hotspot, Keyframe
from pipeline.analyze import Analysis
from pipeline.config import VerdictConfig
from pipeline.results import (
    AVResult,
    BranchResult,
    FusionResult,
    KeyframeResult,
    ModelInfo,
    TriageResult,
)
from pipeline.schemas import AnalyzeResponse
from pipeline.verdict import decide, respond

CONFIG = VerdictConfig()  # threshold 0.5, margin 0.1, mismatch 0.5
MODALITIES = {"triage", "visual", "av", "audio"}


def meta(kind: str = "video", has_audio: bool = True) -> ClipMeta:
    return ClipMeta(
        kind=kind, duration_s=2.0 if kind != "image" else 0.0, native_fps=10.0 if kind == "video" else None,
        width=0 if kind == "audio" else 64, height=0 if kind == "audio" else 48, rotation=0, has_audio=has_audio,
        has_video=kind != "audio", face_coverage=0.5, container="mp4", n_frames=20, size_bytes=1234,
    )


def info(deployment: str) -> ModelInfo:
    return ModelInfo(deployment, f"{deployment.lower()}/v1", True, sha256="ab" * 32)


def triage(p: float = 0.5, early_exit: str | None = None) -> TriageResult:
    return TriageResult(
        BranchResult("triage", "ok", info("FastTriage"), score=p, details={"frames": 20}),
        np.full(20, p, np.float32), early_exit,
    )


def visual(score: float = 0.3, status: str = "ok") -> BranchResult:
    if status != "ok":
        return BranchResult("visual", status, info("CompressionResilient"), reason="no frames")
    return BranchResult(
        "visual", "ok", info("CompressionResilient"), score=score,
        details={"reconstruction_error": 0.02, "frames_analyzed": 4},
    )


def av(sync_score: float | None = 0.2, spoof: float | None = 0.1) -> AVResult:
    model = info("AVAlignment")
    av_branch = (
        BranchResult(
            "av", "ok", model, score=sync_score, details={"sync_probability": 1 - sync_score, "offset_ms": 40.0}
        )
        if sync_score is not None else BranchResult("av", "skipped", model, reason="no video")
    )
    audio = (
        BranchResult("audio", "ok", model, score=spoof, details={"audio_s": 2.0})
        if spoof is not None else BranchResult("audio", "skipped", model, reason="no audio")
    )
    return AVResult(av_branch, audio)


def fused(p: float, gates: dict[str, float] | None = None) -> FusionResult:
    gates = gates if gates is not None else {"triage": 0.1, "visual": 0.2, "av": 0.3, "audio": 0.4}
    return FusionResult(p, info("Fusion"), gate_weights=gates)


def video(p: float = 0.7, **overrides: Any) -> Analysis:
    keyframes = KeyframeResult(
        [Keyframe(3, 0.30004, 0.8)], [Hotspot(0.1, 0.50049, 0.75)], ModelInfo("KeyframeSelector", "dis-kmeans-2", None)
    )
    fields: dict[str, Any] = {
        "meta": meta(), "n_frames": 20, "triage": triage(0.5), "keyframes": keyframes,
        "visual": visual(), "av": av(), "fused": fused(p),
    }
    fields.update(overrides)
    return Analysis(**fields)


def answer(analysis: Analysis, config: VerdictConfig = CONFIG) -> AnalyzeResponse:
    response = respond(analysis, config, "req-1", "clip.mp4")
    # what the API serves must round-trip through its own schema
    return AnalyzeResponse.model_validate(response.model_dump())


# ---- decide ----------------------------------------------------------------------------------


EXACT = VerdictConfig(decision_threshold=0.5, uncertain_margin=0.125)  # binary-exact edges


@pytest.mark.parametrize(
    ("p", "expected"),
    [
        (0.0, (False, "real")),
        (0.375, (False, "real")),  # exactly margin below: outside the band
        (0.376, (False, "uncertain")),
        (0.4999, (False, "uncertain")),
        (0.5, (True, "uncertain")),  # at the threshold: fake side, but uncertain
        (0.624, (True, "uncertain")),
        (0.625, (True, "fake")),  # exactly margin above: outside the band
        (1.0, (True, "fake")),
    ],
)
def test_decide_edges(p: float, expected: tuple[bool, str]) -> None:
    assert decide(p, EXACT) == expected


def test_decide_without_margin_is_never_uncertain() -> None:
    config = VerdictConfig(decision_threshold=0.75, uncertain_margin=0.0)
    assert decide(0.75, config) == (True, "fake")
    assert decide(0.7499, config) == (False, "real")


def test_decide_follows_the_threshold() -> None:
    config = VerdictConfig(decision_threshold=0.25, uncertain_margin=0.0625)
    assert decide(0.3125, config) == (True, "fake")
    assert decide(0.3, config) == (True, "uncertain")
    assert decide(0.1875, config) == (False, "real")


# ---- respond: probability, verdict, confidence -----------------------------------------------


@pytest.mark.parametrize(
    ("p", "is_fake", "verdict", "confidence"),
    [
        (0.8, True, "fake", 0.8), (0.2, False, "real", 0.8),
        (0.45, False, "uncertain", 0.55), (0.55, False, "uncertain", 0.55),  # `uncertain` never calls it fake
    ],
)
def test_fused_probability_verdict_and_confidence(p: float, is_fake: bool, verdict: str, confidence: float) -> None:
    response = answer(video(p))
    assert response.fake_probability == p
    assert response.is_fake is is_fake
    assert response.verdict == verdict
    assert response.confidence == pytest.approx(confidence)
    assert response.early_exit is False
    assert response.gate_weights == {"triage": 0.1, "visual": 0.2, "av": 0.3, "audio": 0.4}
    assert response.request_id == "req-1" and response.filename == "clip.mp4"


def test_verdict_config_is_applied() -> None:
    response = answer(video(0.7), VerdictConfig(decision_threshold=0.8, uncertain_margin=0.05))
    assert (response.is_fake, response.verdict) == (False, "real")
    assert response.confidence == pytest.approx(0.3)


def test_fusion_without_gate_weights_reports_zeros() -> None:
    fallback = FusionResult(0.9, info("Fusion"), status="failed", reason="feature size mismatch")
    response = answer(video(0.9, fused=fallback))
    assert response.gate_weights == {m: 0.0 for m in MODALITIES}
    assert response.fake_probability == 0.9


@pytest.mark.parametrize(("settled", "p"), [("fake", 0.99), ("real", 0.01)])
def test_early_exit_answers_triage_probability(settled: str, p: float) -> None:
    analysis = Analysis(meta=meta(), n_frames=20, triage=triage(p, settled))
    analysis.models["FastTriage"] = info("FastTriage")
    response = answer(analysis, VerdictConfig(uncertain_margin=0.49))  # the margin does not apply: triage settled it
    assert response.early_exit is True
    assert response.fake_probability == p
    assert response.verdict == settled
    assert response.is_fake is (settled == "fake")
    assert response.confidence == pytest.approx(0.99)
    assert response.gate_weights == {"triage": 1.0, "visual": 0.0, "av": 0.0, "audio": 0.0}
    assert response.modalities["triage"].status == "ok"
    for name in ("visual", "av", "audio"):
        assert response.modalities[name].status == "skipped"
        assert response.modalities[name].reason == "early exit: triage settled the clip"
    assert response.keyframes == [] and response.hotspots == []
    assert response.artifacts.visual_anomalies.detected is None
    assert response.artifacts.audio_mismatch.detected is None
    assert set(response.models) == {"FastTriage"}


# ---- respond: modalities ---------------------------------------------------------------------


def test_every_modality_ok_for_a_full_video() -> None:
    response = answer(video())
    assert {name: m.status for name, m in response.modalities.items()} == {m: "ok" for m in MODALITIES}
    assert response.modalities["visual"].score == 0.3
    assert response.modalities["av"].details["offset_ms"] == 40.0
    assert [k.t for k in response.keyframes] == [0.3]
    assert [(h.start, h.end, h.score) for h in response.hotspots] == [(0.1, 0.5, 0.75)]
    assert response.media.frames_analyzed == 20
    assert response.media.kind == "video"


def test_failed_visual_branch_is_reported_with_its_reason() -> None:
    response = answer(video(visual=None, keyframes=None, failures={"visual": "ValueError: bad crops"}))
    report = response.modalities["visual"]
    assert report.status == "failed"
    assert "ValueError: bad crops" in report.reason
    assert response.modalities["av"].status == "ok"
    assert response.artifacts.visual_anomalies.detected is None


def test_failed_av_branch_fails_both_audio_modalities() -> None:
    response = answer(video(av=None, failures={"av": "OSError: wav2vec"}))
    for name in ("av", "audio"):
        assert response.modalities[name].status == "failed"
        assert "OSError: wav2vec" in response.modalities[name].reason
    assert response.modalities["visual"].status == "ok"
    assert response.artifacts.audio_mismatch.detected is None


def test_image_upload_reasons() -> None:
    analysis = Analysis(meta=meta("image", has_audio=False), n_frames=1, visual=visual(0.7), fused=fused(0.7))
    response = answer(analysis)
    assert response.modalities["triage"].status == "skipped"
    assert response.modalities["triage"].reason == "not a video"
    assert response.modalities["visual"].status == "ok"
    for name in ("av", "audio"):
        assert response.modalities[name].status == "skipped"
        assert response.modalities[name].reason == "image upload: only the visual branch runs"
    assert response.media.kind == "image"


def test_audio_upload_reasons() -> None:
    analysis = Analysis(meta=meta("audio"), n_frames=0, av=av(sync_score=None, spoof=0.8), fused=fused(0.8))
    response = answer(analysis)
    assert response.modalities["triage"].reason == "not a video"
    assert response.modalities["visual"].status == "skipped"
    assert response.modalities["visual"].reason == "audio upload: no video"
    assert response.modalities["av"].status == "skipped"
    assert response.modalities["audio"].status == "ok"


def test_video_without_audio_reason() -> None:
    response = answer(video(meta=meta(has_audio=False), av=None))
    for name in ("av", "audio"):
        assert response.modalities[name].status == "skipped"
        assert response.modalities[name].reason == "no audio"


# ---- respond: artifacts ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("score", "threshold", "detected"), [(0.5, 0.5, True), (0.49, 0.5, False), (0.55, 0.6, False), (0.35, 0.3, True)]
)
def test_visual_anomaly_follows_mismatch_threshold(score: float, threshold: float, detected: bool) -> None:
    response = answer(video(visual=visual(score)), VerdictConfig(mismatch_threshold=threshold))
    anomalies = response.artifacts.visual_anomalies
    assert anomalies.detected is detected
    assert anomalies.score == score
    assert anomalies.reconstruction_error == 0.02
    assert anomalies.frames_analyzed == 4


def test_visual_anomaly_unknown_when_visual_did_not_run() -> None:
    anomalies = answer(video(visual=visual(status="skipped"))).artifacts.visual_anomalies
    assert anomalies.detected is None and anomalies.score is None and anomalies.frames_analyzed == 0


@pytest.mark.parametrize(
    ("sync_score", "spoof", "threshold", "detected"),
    [
        (0.2, 0.1, 0.5, False),
        (0.6, 0.1, 0.5, True),  # lips out of sync
        (0.2, 0.7, 0.5, True),  # spoofed audio
        (0.6, 0.1, 0.7, False),  # the threshold moved
        (None, 0.7, 0.5, True),  # no usable lips: the audio alone decides
        (None, 0.3, 0.5, False),
        (None, None, 0.5, None),  # neither ran
        (0.6, None, 0.5, True),  # the voice model abstained (say, out of distribution): the lips still decide
        (0.2, None, 0.5, False),
    ],
)
def test_audio_mismatch_follows_mismatch_threshold(
    sync_score: float | None, spoof: float | None, threshold: float, detected: bool | None
) -> None:
    response = answer(video(av=av(sync_score, spoof)), VerdictConfig(mismatch_threshold=threshold))
    mismatch = response.artifacts.audio_mismatch
    assert mismatch.detected is detected
    assert mismatch.score == sync_score
    assert mismatch.spoof_probability == spoof
    if sync_score is not None:
        assert mismatch.sync_probability == pytest.approx(1 - sync_score)
        assert mismatch.offset_ms == 40.0
    else:
        assert mismatch.sync_probability is None and mismatch.offset_ms is None


# ---- respond: models and media ---------------------------------------------------------------


def test_models_and_media_are_reported() -> None:
    analysis = video()
    for name in ("FastTriage", "CompressionResilient", "AVAlignment", "Fusion"):
        analysis.models[name] = info(name)
    analysis.models["KeyframeSelector"] = ModelInfo("KeyframeSelector", "dis-kmeans-2", None)
    analysis.timings_ms = {"decode": 1.0, "total": 2.0}
    response = answer(analysis)
    assert set(response.models) == {"FastTriage", "CompressionResilient", "AVAlignment", "Fusion", "KeyframeSelector"}
    assert response.models["Fusion"].version == "fusion/v1"
    assert response.models["Fusion"].sha256 == "ab" * 32
    assert response.models["KeyframeSelector"].trained is None
    assert response.timings_ms == {"decode": 1.0, "total": 2.0}
    assert response.media.size_bytes == 1234 and response.media.face_coverage == 0.5


def test_no_verdict_without_fusion_or_early_exit() -> None:
    """An analysis stopped before fusion (training's `fuse=False`) is not an answer."""

    meta = ClipMeta(kind="image", duration_s=0.0, native_fps=None, width=8, height=8, rotation=0,
                    has_audio=False, has_video=True, face_coverage=1.0, container="png")
    with pytest.raises(ValueError, match="no verdict"):
        respond(Analysis(meta, 1), VerdictConfig(), "r", None)
