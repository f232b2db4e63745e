"""The verdict stage: an `Analysis` -> the API's `AnalyzeResponse` (verdict, evidence, keyframes, versions)."""

from __future__ import annotations

from pipeline.analyze import ABSTAINED, Analysis
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
    VerdictReason,
    VisualAnomalies,
)


def decide(p: float, config: VerdictConfig) -> tuple[bool, str]:
    """(leans fake, verdict) for a fused P(fake): whether P is at or above the threshold (the side `confidence`
    is read on; the answer's `is_fake` is the verdict's), and "uncertain" within `uncertain_margin` of it."""
    leans_fake = p >= config.decision_threshold
    if abs(p - config.decision_threshold) < config.uncertain_margin:
        return leans_fake, "uncertain"
    return leans_fake, "fake" if leans_fake else "real"


def model_version(info: ModelInfo) -> ModelVersion:
    return ModelVersion(
        version=info.version, trained=info.trained, sha256=info.sha256,
        requested_version=info.requested_version, error=info.error, placement=info.placement, canary=info.canary,
    )


def _report(branch: BranchResult | None, missing: tuple[str, str]) -> ModalityReport:
    if branch is None:
        code, reason = missing
        return ModalityReport(status="skipped", reason=reason, code=code)
    return ModalityReport(
        status=branch.status, score=branch.score, reason=branch.reason, code=branch.code, details=branch.details,
    )


def reasons_for(analysis: Analysis, config: VerdictConfig) -> list[VerdictReason]:
    """What the evidence lacked or where it broke; `decisive` ones make the verdict `uncertain`."""
    reasons: list[VerdictReason] = []
    faceless = [b.modality for b in analysis.branches() if b.code == "no_face"]
    if faceless:
        reasons.append(VerdictReason(
            code="no_face", message="no face to analyse for " + ", ".join(faceless) + "; those modalities abstained",
            modalities=faceless, decisive=False,
        ))
    blurred = [b.modality for b in analysis.branches() if b.code == "low_quality"]
    if blurred:
        accuses = _accuses_a_blurred_face(analysis, config)
        reasons.append(VerdictReason(
            code="low_quality", message="the face shows too little detail to judge for " + ", ".join(blurred)
            + " (blurred, or enlarged from a small picture); those modalities abstained"
            + ("; lips read off such a face can look out of step with the voice by misreading alone, so that "
               "does not make a fake verdict" if accuses else ""),
            modalities=blurred, decisive=accuses,
        ))
    voiceless = [b.modality for b in analysis.branches() if b.code == "no_speech"]
    if voiceless:
        reasons.append(VerdictReason(
            code="no_speech", message="no speech heard for " + ", ".join(voiceless) + "; those modalities abstained",
            modalities=voiceless, decisive=False,
        ))
    unheard = [b.modality for b in analysis.branches() if b.code == "out_of_distribution"]
    if unheard:
        reasons.append(VerdictReason(
            code="out_of_distribution",
            message="unlike anything the models were trained on, real or fake: " + ", ".join(unheard)
            + "; those modalities abstained",
            modalities=unheard, decisive=False,
        ))
    if analysis.fused is None and not analysis.early_exit:
        reasons.append(VerdictReason(
            code="no_usable_modality", message="no model had evidence to judge this upload: no verdict",
            decisive=True,
        ))
    strangers = [b.modality for b in analysis.branches() if b.status == "ok" and b.out_of_distribution]
    if strangers and analysis.fused is not None:
        reasons.append(VerdictReason(
            code="out_of_distribution",
            message="unlike the authentic data the models were trained on: " + ", ".join(strangers)
            + "; their scores are guesses here",
            modalities=strangers, decisive=True,
        ))
    for name, failure in analysis.failures.items():
        modalities = ["av", "audio"] if name == "av" else [name]
        reasons.append(VerdictReason(
            code="branch_failed", message=f"{name} failed ({failure}); the other branches cannot stand for it",
            modalities=modalities, decisive=True,
        ))
    fused = analysis.fused
    if fused is not None and fused.status != "ok":
        reasons.append(VerdictReason(code="fusion_degraded", message=fused.reason or "fusion degraded", decisive=True))
    weak = weak_evidence(analysis, config)
    if weak is not None:
        reasons.append(weak)
    if fused is not None and abs(fused.probability - config.decision_threshold) < config.uncertain_margin:
        reasons.append(VerdictReason(
            code="near_threshold",
            message=f"P(fake) {fused.probability:.2f} is within {config.uncertain_margin:g} of the threshold "
            f"{config.decision_threshold:g}",
            decisive=True,
        ))
    return reasons


def _accuses_a_blurred_face(analysis: Analysis, config: VerdictConfig) -> bool:
    """True when fusion would answer `fake` for a clip whose face showed too little detail for the visual branch
    (`low_quality`) and no voice model says fake on its own. What remains is read off that face: its lips. Noise
    in a lip reading can make speech look out of step with the lips, but it cannot make them look in step, so on
    such a face a reading in sync is evidence and one out of sync is not."""
    fused = analysis.fused
    if fused is None or fused.probability < config.decision_threshold + config.uncertain_margin:
        return False
    return not any(
        b.modality == "audio" and b.status == "ok" and b.score is not None and b.score >= config.decision_threshold
        for b in analysis.branches()
    )


def weak_evidence(analysis: Analysis, config: VerdictConfig) -> VerdictReason | None:
    """`weak_evidence` (decisive) when fusion's P(fake) reaches the threshold but no branch it read scores
    the threshold on its own. Fusion learned from the training benchmark, where authentic clips score
    near 0 on every branch, that any doubt means fake: on a fresh independent sample it answered two
    authentic clips 0.98-0.99 from visual 0.18-0.23 and AV 0.28-0.42. Branches fusion does not read
    (triage for v4 and later) do not count; a fusion that reports no gate weights is not judged."""
    fused = analysis.fused
    if not config.fake_needs_a_branch or fused is None or fused.status != "ok" or not fused.gate_weights:
        return None
    if fused.probability < config.decision_threshold + config.uncertain_margin:
        return None  # not a `fake` verdict (or `near_threshold` already abstains)
    read = [b for b in analysis.branches()
            if b.status == "ok" and b.score is not None and b.modality in fused.gate_weights]
    if not read or any(b.score >= config.decision_threshold for b in read):
        return None
    scores = ", ".join(f"{b.modality} {b.score:.2f}" for b in read)
    return VerdictReason(
        code="weak_evidence",
        message=f"fusion's P(fake) is {fused.probability:.2f}, but no branch it read says fake on its own "
        f"({scores}): the verdict abstains",
        modalities=[b.modality for b in read], decisive=True,
    )


def served_probability(analysis: Analysis) -> float:
    """What the service answers as `fake_probability`: triage's score on early exit, else fusion's."""
    if analysis.fused is None:
        return float(analysis.triage.branch.score)
    return analysis.fused.probability


def respond(analysis: Analysis, config: VerdictConfig, request_id: str, filename: str | None) -> AnalyzeResponse:
    """The answer to one upload. An analysis stopped before fusion on purpose (`fuse=False`) is not one."""
    if analysis.fused is None and not analysis.early_exit and not any(
        b.code in ABSTAINED for b in analysis.branches()
    ):
        raise ValueError("no verdict: the analysis neither fused its branches nor exited early")
    meta = analysis.meta
    triage, keyframes, visual, av, fused = analysis.triage, analysis.keyframes, analysis.visual, analysis.av, analysis.fused
    failures = analysis.failures
    early = analysis.early_exit and fused is None
    reasons = reasons_for(analysis, config)
    if early:  # triage settled the clip
        p = served_probability(analysis)
        leans_fake = triage.early_exit == "fake"
        verdict = "fake" if leans_fake else "real"
    elif fused is None:  # every modality abstained
        p, leans_fake, verdict = 0.5, False, "uncertain"
    else:
        p = fused.probability
        leans_fake, verdict = decide(p, config)
        if any(r.decisive for r in reasons):
            verdict = "uncertain"
    is_fake = verdict == "fake"  # the service calls it fake; an `uncertain` answer never does, whatever P says

    def why_skipped(modality: str) -> tuple[str, str]:
        if modality in failures:
            return "branch_failed", "failed: " + failures[modality]
        if early:
            return "early_exit", "early exit: triage settled the clip"
        if meta.kind == "image":
            return "not_applicable", "image upload: only the visual branch runs"
        if meta.kind == "audio":
            return "no_video", "audio upload: no video"
        return ("no_audio", "no audio") if not meta.has_audio else ("not_applicable", "did not run")

    modalities = {
        "triage": _report(triage.branch if triage else None, ("not_applicable", "not a video")),
        "visual": _report(visual, why_skipped("visual")),
        "av": _report(av.av if av else None, why_skipped("av")),
        "audio": _report(av.audio if av else None, why_skipped("av")),
    }
    for name, reason in failures.items():
        failed = ModalityReport(status="failed", reason=reason, code="branch_failed")
        if name == "av":
            modalities["av"] = modalities["audio"] = failed
        else:
            modalities[name] = failed

    threshold = config.mismatch_threshold
    av_ok = av is not None and av.av.status == "ok"
    audio_ok = av is not None and av.audio.status == "ok"
    vis_ok = visual is not None and visual.status == "ok"
    artifacts = Artifacts(
        audio_mismatch=AudioMismatch(
            # from the branches that were used: an abstaining voice model does not hide a sync verdict
            detected=(av.av.score >= threshold if av_ok else False) or (av.audio.score >= threshold if audio_ok else False)
            if av_ok or audio_ok else None,
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
        gate_weights = {m: 0.0 for m in modalities} | ((fused.gate_weights if fused is not None else None) or {})
    return AnalyzeResponse(
        request_id=request_id,
        filename=filename,
        is_fake=is_fake,
        confidence=p if leans_fake else 1.0 - p,
        fake_probability=p,
        verdict=verdict,
        reasons=reasons,
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
            face_coverage=meta.face_coverage, faces_seen=meta.faces_seen, face_chosen_by=meta.face_chosen_by,
            frames_analyzed=analysis.n_frames,
            variable_frame_rate=meta.variable_frame_rate, container=meta.container,
            video_codec=meta.video_codec, audio_codec=meta.audio_codec, size_bytes=meta.size_bytes,
        ),
        models={name: model_version(info) for name, info in analysis.models.items() if info is not None},
        timings_ms=analysis.timings_ms,
    )
