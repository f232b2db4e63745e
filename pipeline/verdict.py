"""The verdict stage: an `Analysis` -> the API's `AnalyzeResponse` (verdict, evidence, keyframes, versions)."""

from __future__ import annotations

from pipeline.analyze import Analysis
from pipeline.config import VerdictConfig
from pipeline.results import BranchResult, ModelInfo
from pipeline.schemas import (
    AnalyzeResponse,
    Artifacts,
    AudioMismatch,
    HotspotOut,
    KeyframeOut,
    MediaInfo,
    ModalityReport,
    ModelVersion,
    VisualAnomalies,
)


def decide(p: float, config: VerdictConfig) -> tuple[bool, str]:
    """(is_fake, verdict) for a fused P(fake): "uncertain" within `uncertain_margin` of the threshold."""
    is_fake = p >= config.decision_threshold
    if abs(p - config.decision_threshold) < config.uncertain_margin:
        return is_fake, "uncertain"
    return is_fake, "fake" if is_fake else "real"


def model_version(info: ModelInfo) -> ModelVersion:
    return ModelVersion(
        version=info.version, trained=info.trained, sha256=info.sha256,
        requested_version=info.requested_version, error=info.error, placement=info.placement, canary=info.canary,
    )


def _report(branch: BranchResult | None, missing_reason: str) -> ModalityReport:
    if branch is None:
        return ModalityReport(status="skipped", reason=missing_reason)
    return ModalityReport(status=branch.status, score=branch.score, reason=branch.reason, details=branch.details)


def served_probability(analysis: Analysis) -> float:
    """What the service answers as `fake_probability`: triage's score on early exit, else fusion's."""
    if analysis.fused is None:
        return float(analysis.triage.branch.score)
    return analysis.fused.probability


def respond(analysis: Analysis, config: VerdictConfig, request_id: str, filename: str | None) -> AnalyzeResponse:
    """The answer to one upload: needs either a fused result or triage's early exit."""
    if analysis.fused is None and not analysis.early_exit:
        raise ValueError("no verdict: the analysis neither fused its branches nor exited early")
    meta = analysis.meta
    triage, keyframes, visual, av, fused = analysis.triage, analysis.keyframes, analysis.visual, analysis.av, analysis.fused
    failures = analysis.failures
    early = fused is None
    p = served_probability(analysis)
    if early:  # triage settled the clip
        is_fake = triage.early_exit == "fake"
        verdict = "fake" if is_fake else "real"
    else:
        is_fake, verdict = decide(p, config)

    def why_skipped(modality: str) -> str:
        if modality in failures:
            return "failed: " + failures[modality]
        if early:
            return "early exit: triage settled the clip"
        if meta.kind == "image":
            return "image upload: only the visual branch runs"
        if meta.kind == "audio":
            return "audio upload: no video"
        return "no audio" if not meta.has_audio else "did not run"

    modalities = {
        "triage": _report(triage.branch if triage else None, "not a video"),
        "visual": _report(visual, why_skipped("visual")),
        "av": _report(av.av if av else None, why_skipped("av")),
        "audio": _report(av.audio if av else None, why_skipped("av")),
    }
    for name, reason in failures.items():
        if name == "av":
            modalities["av"] = modalities["audio"] = ModalityReport(status="failed", reason=reason)
        else:
            modalities[name] = ModalityReport(status="failed", reason=reason)

    threshold = config.mismatch_threshold
    av_ok = av is not None and av.av.status == "ok"
    audio_ok = av is not None and av.audio.status == "ok"
    vis_ok = visual is not None and visual.status == "ok"
    artifacts = Artifacts(
        audio_mismatch=AudioMismatch(
            detected=(av.av.score >= threshold or av.audio.score >= threshold) if av_ok and audio_ok
            else (av.audio.score >= threshold if audio_ok else None),
            score=av.av.score if av_ok else None,
            sync_probability=av.av.details.get("sync_probability") if av_ok else None,
            offset_ms=av.av.details.get("offset_ms") if av_ok else None,
            spoof_probability=av.audio.score if audio_ok else None,
        ),
        visual_anomalies=VisualAnomalies(
            detected=visual.score >= threshold if vis_ok else None,
            score=visual.score if vis_ok else None,
            reconstruction_error=visual.details.get("reconstruction_error") if vis_ok else None,
            frames_analyzed=int(visual.details.get("frames_analyzed", 0)) if vis_ok else 0,
        ),
    )
    if early:
        gate_weights = {m: (1.0 if m == "triage" else 0.0) for m in modalities}
    else:
        gate_weights = fused.gate_weights or {m: 0.0 for m in modalities}
    return AnalyzeResponse(
        request_id=request_id,
        filename=filename,
        is_fake=is_fake,
        confidence=p if is_fake else 1.0 - p,
        fake_probability=p,
        verdict=verdict,
        early_exit=early,
        artifacts=artifacts,
        gate_weights=gate_weights,
        modalities=modalities,
        keyframes=[KeyframeOut(t=round(k.t, 3), score=k.score) for k in (keyframes.keyframes if keyframes else [])],
        hotspots=[
            HotspotOut(start=round(h.start, 3), end=round(h.end, 3), score=h.score)
            for h in (keyframes.hotspots if keyframes else [])
        ],
        media=MediaInfo(
            kind=meta.kind, duration_s=meta.duration_s, native_fps=meta.native_fps, width=meta.width,
            height=meta.height, rotation=meta.rotation, has_audio=meta.has_audio,
            face_coverage=meta.face_coverage, frames_analyzed=analysis.n_frames,
            variable_frame_rate=meta.variable_frame_rate, container=meta.container,
            video_codec=meta.video_codec, audio_codec=meta.audio_codec, size_bytes=meta.size_bytes,
        ),
        models={name: model_version(info) for name, info in analysis.models.items() if info is not None},
        timings_ms=analysis.timings_ms,
    )
