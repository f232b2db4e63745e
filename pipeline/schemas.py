"""The HTTP API's response models: the single source of `/openapi.json` and `/docs`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


ReasonCode = Literal[
    "no_face", "no_speech", "no_usable_modality", "branch_failed", "near_threshold", "fusion_degraded", "out_of_distribution",
    "weak_evidence", "low_quality",
]


class VerdictReason(BaseModel):
    code: ReasonCode = Field(
        description="no_face: a face model had no face to look at (it abstained); no_speech: the voice models "
        "heard no speech (music, noise, silence) and abstained; no_usable_modality: no model "
        "had evidence, so there is no verdict; branch_failed: a branch raised, the rest cannot stand for it; "
        "near_threshold: the fused probability is within uncertain_margin of the threshold; fusion_degraded: "
        "fusion could not read a branch's features and averaged the branch scores; out_of_distribution: the "
        "input is unlike the training data: a face unlike the authentic faces (decisive: the verdict abstains), or "
        "a voice unlike both the authentic and the spoofed speech (the audio branch abstained, not decisive); "
        "weak_evidence: fusion says fake but no branch it read says so on its own; low_quality: a face model's "
        "input shows too little detail to judge (a face blurred, or enlarged from a thumbnail): it abstained; "
        "decisive where the verdict would otherwise be fake, which then rests on lips read off that face"
    )
    message: str
    modalities: list[str] = Field(default_factory=list, description="the modalities the reason is about")
    decisive: bool = Field(description="true when this reason made the verdict `uncertain`")


class ModalityReport(BaseModel):
    status: Literal["ok", "skipped", "failed"] = Field(description="ok: ran; skipped: see reason; failed: raised")
    score: float | None = Field(None, description="P(fake) from this modality alone (uncalibrated)")
    reason: str | None = Field(None, description="why it did not run, or a caveat (no face, no audio, early exit)")
    code: str | None = Field(
        None, description="machine-readable reason it did not run: no_face, no_speech, no_audio, no_video, early_exit, "
        "branch_failed, not_applicable, out_of_distribution, low_quality"
    )
    details: dict[str, float | int | str | bool | list[float] | None] = Field(default_factory=dict)


class KeyframeOut(BaseModel):
    t: float = Field(description="seconds from the start")
    score: float = Field(description="triage P(fake) of that frame")


class HotspotOut(BaseModel):
    start: float
    end: float
    score: float = Field(description="mean triage P(fake) over the range")


class ModelVersion(BaseModel):
    version: str | None = Field(description="weights bundle `<model>/<version>`, or the algorithm's version")
    trained: bool | None = Field(description="false for untrained (random) weights; null where nothing is learned")
    sha256: str | None = None
    requested_version: str | None = None
    error: str | None = Field(None, description="last version that failed to load; the reported version keeps serving")
    canary: dict[str, str | float] | None = Field(
        None, description="{version, fraction} of the canary this deployment also serves, if any"
    )
    placement: dict[str, str | list[str]] = Field(
        default_factory=dict, description="replica_id, node_id and gpu_ids of the replica that answered"
    )


class AudioMismatch(BaseModel):
    detected: bool | None = Field(description="null when the AV branch did not run")
    score: float | None = None
    sync_probability: float | None = None
    offset_ms: float | None = Field(None, description="estimated audio lead (+) or lag (-) against the lips")
    spoof_probability: float | None = None


class VisualAnomalies(BaseModel):
    detected: bool | None = Field(description="null when the visual branch did not run")
    score: float | None = None
    reconstruction_error: float | None = Field(None, description="denoising-autoencoder error on the analysed crops")
    frames_analyzed: int = 0


class Artifacts(BaseModel):
    audio_mismatch: AudioMismatch
    visual_anomalies: VisualAnomalies


class MediaInfo(BaseModel):
    kind: Literal["video", "image", "audio"]
    duration_s: float
    native_fps: float | None
    width: int
    height: int
    rotation: int
    has_audio: bool
    face_coverage: float
    faces_seen: int = Field(0, description="the most faces one detection found; the most prominent track is analysed")
    face_chosen_by: Literal["prominence", "speech"] = Field(
        "prominence",
        description="why the analysed face was chosen among several: the most prominent, or a less prominent one "
        "whose lips follow the sound where the most prominent face's do not",
    )
    frames_analyzed: int
    variable_frame_rate: bool
    container: str
    video_codec: str | None
    audio_codec: str | None
    size_bytes: int


class AnalyzeResponse(BaseModel):
    request_id: str
    filename: str | None
    is_fake: bool = Field(description="true exactly when `verdict` is `fake`: an `uncertain` answer never calls "
                          "the upload fake, however high `fake_probability` is")
    confidence: float = Field(
        description="calibrated probability of the side of the decision threshold P(fake) falls on: P(fake) at or "
        "above it, else 1 - P(fake); the same for all three verdicts (for `uncertain` it says how close to a coin "
        "flip the evidence is; 0.5 with no evidence)"
    )
    fake_probability: float = Field(description="calibrated P(fake) of the fused verdict; 0.5 when there is no evidence")
    verdict: Literal["fake", "real", "uncertain"] = Field(
        description="`uncertain` whenever a decisive reason in `reasons` applies: no evidence, a failed branch, "
        "a probability near the threshold, a degraded fusion"
    )
    reasons: list[VerdictReason] = Field(
        default_factory=list, description="why the verdict is what it is, or what it could not see (machine-readable)"
    )
    early_exit: bool = Field(description="true when FastTriage settled the clip and later stages did not run")
    artifacts: Artifacts
    gate_weights: dict[str, float] = Field(description="Fusion's weight per modality; 0 for a modality that did not run or that the "
        "served fusion does not read")
    modalities: dict[str, ModalityReport]
    keyframes: list[KeyframeOut]
    hotspots: list[HotspotOut]
    media: MediaInfo
    models: dict[str, ModelVersion] = Field(description="deployment -> the weights version that answered")
    timings_ms: dict[str, float] = Field(description="wall time per stage as seen by the ingress, plus total")


class ErrorResponse(BaseModel):
    error: str = Field(description="machine-readable kind, e.g. not_media, too_large, unusable_media, unavailable, timeout, worker_lost")
    detail: str
    request_id: str | None = None


class HealthResponse(BaseModel):
    status: Literal["ok"]


class DeploymentState(BaseModel):
    status: str
    replicas: dict[str, int] = Field(description="replica state -> count")
    model: ModelVersion | None = None


class ReadyResponse(BaseModel):
    ready: bool
    deployments: dict[str, DeploymentState]


class ModelsResponse(BaseModel):
    application: str
    deployments: dict[str, DeploymentState]


class JobAccepted(BaseModel):
    id: str
    status_url: str
    files: int


class JobFile(BaseModel):
    index: int
    filename: str | None
    status: Literal["queued", "running", "done", "failed"]
    stage: str
    percent: float
    attempts: int = Field(description="how many workers have taken this file (retries after a worker died)")
    result: AnalyzeResponse | None = None
    error: ErrorResponse | None = None


class JobStatus(BaseModel):
    id: str
    status: Literal["queued", "running", "done", "failed"] = Field(
        description="done: every file finished (some may have failed); failed: every file failed"
    )
    stage: Literal["queued", "decoding", "triage", "keyframes", "branches", "fusion", "done"]
    percent: float
    created: float
    updated: float
    finished: float | None
    files: list[JobFile]


class FeedbackRequest(BaseModel):
    """An analyst's label on a file the service analysed: a job's file, or a synchronous request (media re-sent)."""

    model_config = ConfigDict(extra="forbid")

    job_id: str | None = Field(None, description="the job of the file (give this or request_id)")
    file_index: int = Field(0, ge=0, description="the file's position in the job")
    request_id: str | None = Field(None, description="the request_id of a /v1/analyze answer (attach the file to keep it)")
    label: Literal["real", "fake"]
    family: str | None = Field(None, description="the manipulation family, when known (fake only), e.g. faceswap")
    note: str | None = Field(None, max_length=2000)


class FeedbackItem(BaseModel):
    id: str
    created: float
    label: Literal["real", "fake"]
    family: str | None
    note: str | None
    job_id: str | None
    file_index: int | None
    request_id: str | None
    filename: str | None
    sha256: str | None = Field(description="of the kept media; null when the media was no longer at hand")
    nbytes: int | None
    verdict: str | None = Field(description="what the service answered then")
    fake_probability: float | None
    models: dict[str, str | None] = Field(description="deployment -> the weights version that answered then")
    key_name: str | None = Field(description="the API key that gave the label")
    kept_media: bool


class FeedbackList(BaseModel):
    items: list[FeedbackItem]
    total: int
