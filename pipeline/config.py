"""Every setting of the pipeline, declared once: one pydantic model per stage, one per deployment's `user_config`.

A stage's config says what the stage computes; a deployment's `user_config` is its stage's config
plus the serving parts it has (weights version and canary, `@serve.batch` sizes, the edge's
limits). Unknown keys are errors everywhere, so a typo in a Serve YAML fails the deploy instead of
being ignored. Serving, training and the benchmark read these models and nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from media.config import DecodeConfig

# The trained version shipped in weights/ (v0 is the untrained seeded initialisation).
DEFAULT_WEIGHTS_VERSION = "v1"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- stage configs --------------------------------------------------------------------------


class TriageConfig(_Strict):
    """FastTriage: the clip exits early when p_triage < low or > high.

    Triage scores face crops: below `min_face_coverage` it abstains (it would score the centre of
    faceless frames, which it never learned), and then the clip never exits early.
    """

    early_exit_low: float = Field(0.02, ge=0.0, le=1.0)
    early_exit_high: float = Field(0.98, ge=0.0, le=1.0)
    min_face_coverage: float = Field(0.5, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> "TriageConfig":
        if self.early_exit_low > self.early_exit_high:
            raise ValueError("early_exit_low must not exceed early_exit_high")
        return self


class KeyframeConfig(_Strict):
    """KeyframeSelector: how many keyframes, and the frame score above which a range is a hotspot."""

    k: int = Field(4, ge=1, le=64)
    hotspot_threshold: float = Field(0.5, ge=0.0, le=1.0)
    seed: int = 0


class VisualConfig(_Strict):
    """CompressionResilient: crops scored when no keyframes were selected (images).

    The model was trained on face crops only: it scores frames with a face and abstains
    (`no_face`) when none of the clip's frames has one, and (`low_quality`) when the face is too blurred or
    enlarged from too small a picture to show any detail.
    """

    max_crops: int = Field(8, ge=1, le=128)
    # A face is not judged (`low_quality`) when its crops show less detail than `min_face_detail` and the top quarter
    # of the crops (the hair and the scene above the head) less than `min_surround_detail`: the whole picture is blurred
    # or enlarged from a small one, and the model's score on it is a guess. A face blurred inside a sharp head is
    # judged: that contrast is what a pasted low-resolution face looks like. Detail is `media.face_detail` (the share
    # of spectral power above what a 32 px thumbnail of the crop can hold), the median over the scored crops. Both
    # minimums are the 90th percentile of the training benchmark's authentic faces made 32 px thumbnails:
    # `spectrashield fit-detail --manifest build/bench400/manifest.jsonl` gives 0.0048 and 0.0116 over 177 faces (as
    # they are, medians 0.039 and 0.065). The benchmark's test faces, fakes included, measure 0.0056 and up.
    min_face_detail: float = Field(0.005, ge=0.0, le=1.0)
    min_surround_detail: float = Field(0.012, ge=0.0, le=1.0)


class AVConfig(_Strict):
    """AVAlignment: when the lips are trusted, and how much audio is read."""

    min_face_coverage: float = Field(0.5, ge=0.0, le=1.0)  # below this the lips are not trusted
    max_audio_s: float = Field(30.0, gt=0)  # longer audio is cut to bound latency
    # Less speech than this (Silero VAD, models.vad) and the spoof head and lip sync abstain: `no_speech`.
    min_speech_s: float = Field(0.3, ge=0.0)
    # Audio that the offset head finds this far ahead of (lead) or behind (lag) the lips is judged for synchrony
    # at that offset: capture chains shift sound by this much (ITU-R BT.1359's thresholds of detectability,
    # +45 / -125 ms), so it is not evidence of a manipulation. 0 and 0 judge every clip as recorded.
    capture_lead_ms: float = Field(45.0, ge=0.0)
    capture_lag_ms: float = Field(125.0, ge=0.0)


class FuseConfig(_Strict):
    """Fusion has no settings of its own beyond its weights: the model decides how modalities combine."""


class VerdictConfig(_Strict):
    """How the fused probability becomes `fake` / `real` / `uncertain`, and when an artifact is "detected"."""

    decision_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    uncertain_margin: float = Field(0.1, ge=0.0, lt=0.5)  # |p - threshold| below this -> "uncertain"
    mismatch_threshold: float = Field(0.5, gt=0.0, lt=1.0)  # branch score above which an artifact is "detected"
    # A `fake` verdict needs a branch that fusion read to score at least `decision_threshold` on its own;
    # otherwise fusion has turned doubts into certainty (reason `weak_evidence`, the verdict abstains).
    fake_needs_a_branch: bool = True


# ---- serving parts --------------------------------------------------------------------------


class CanaryConfig(_Strict):
    """A second version that answers a random `fraction` of requests."""

    version: str
    fraction: float = Field(ge=0.0, le=1.0)


class WeightsConfig(_Strict):
    """The weights part of a model deployment's user_config."""

    version: str = DEFAULT_WEIGHTS_VERSION
    canary: CanaryConfig | None = None


class BatchConfig(_Strict):
    """The `@serve.batch` part of a model deployment's user_config.

    Requests that wait in a replica at the same time share one forward pass, up to `max_batch_size`
    of them; a batch starts once it is full or `batch_wait_timeout_s` after its first request. The
    default, 1, runs every request alone: on the 2-core CPU profile batching bought nothing
    (bench/changes.md). Keep `max_ongoing_requests` >= `max_batch_size`, or batches never fill.
    """

    max_batch_size: int = Field(1, ge=1, le=256)
    batch_wait_timeout_s: float = Field(0.0, ge=0.0, le=1.0)

    def apply_to(self, handler: Any) -> None:
        """Retune a `@serve.batch` method in place (no replica restart)."""
        handler.set_max_batch_size(self.max_batch_size)
        handler.set_batch_wait_timeout_s(self.batch_wait_timeout_s)


# ---- deployments' user_config models --------------------------------------------------------


class TriageDeploymentConfig(TriageConfig, WeightsConfig, BatchConfig):
    """user_config of FastTriage."""


class VisualDeploymentConfig(VisualConfig, WeightsConfig, BatchConfig):
    """user_config of CompressionResilient."""


class AVDeploymentConfig(AVConfig, WeightsConfig):
    """user_config of AVAlignment (not batched: see deployments/av_alignment.py)."""


class FusionDeploymentConfig(FuseConfig, WeightsConfig, BatchConfig):
    """user_config of Fusion."""


class IngressConfig(VerdictConfig):
    """user_config of the ingress: the edge's limits and the verdict rules it applies."""

    max_upload_bytes: int = Field(200 * 1024 * 1024, ge=1)
    # A synchronous analysis still running after this long is answered with the API's JSON 504
    # (Retry-After) instead of being cut by Serve's proxy at http_options.request_timeout_s (120 s
    # in the cluster profiles; keep this below it). Queued jobs (/v1/jobs) have no such limit.
    analysis_timeout_s: float = Field(110.0, gt=0)
    # Request bodies (deployments.edge.BodyLimit): at most max_upload_bytes (+1 MiB of multipart framing)
    # per request, /v1/jobs included, arriving within body_timeout_s (+1 s per declared MiB), else 413 / 408.
    body_timeout_s: float = Field(30.0, gt=0)
    max_job_files: int = Field(64, ge=1)  # files in one POST /v1/jobs
    # Media by URL (deployments.fetch): http(s) only, public addresses only unless a network is listed here
    # (CIDR, e.g. "10.0.0.0/8"), each hop resolved and checked, at most url_max_redirects redirects, the body
    # streamed and cut at max_upload_bytes, the whole fetch within url_timeout_s.
    url_allow_networks: list[str] = Field(default_factory=list)
    url_timeout_s: float = Field(30.0, gt=0)
    url_max_redirects: int = Field(3, ge=0, le=10)

    @field_validator("url_allow_networks")
    @classmethod
    def _networks(cls, networks: list[str]) -> list[str]:
        import ipaddress

        for network in networks:
            ipaddress.ip_network(network, strict=False)  # ValueError: the deploy fails on a typo
        return networks


def stage_part(config: BaseModel, stage_model: type[BaseModel]) -> BaseModel:
    """The stage's own settings out of a deployment's user_config model."""
    return stage_model.model_validate(config.model_dump(include=set(stage_model.model_fields)))


class PipelineConfig(_Strict):
    """Every stage's settings: what `analyze` runs with, in-process or served."""

    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    triage: TriageConfig = Field(default_factory=TriageConfig)
    keyframes: KeyframeConfig = Field(default_factory=KeyframeConfig)
    visual: VisualConfig = Field(default_factory=VisualConfig)
    av: AVConfig = Field(default_factory=AVConfig)
    fuse: FuseConfig = Field(default_factory=FuseConfig)
    verdict: VerdictConfig = Field(default_factory=VerdictConfig)

    @classmethod
    def from_user_configs(cls, user_configs: dict[str, dict[str, Any]]) -> PipelineConfig:
        """From deployment name -> user_config (as in a Serve config); each validated by its deployment's model."""
        from pipeline.table import STAGES

        return cls(**{
            stage.name: stage_part(stage.user_config.model_validate(user_configs.get(stage.deployment) or {}), stage.config)
            for stage in STAGES
        })

    @classmethod
    def from_serve_config(cls, path: str | Path) -> PipelineConfig:
        """From a Serve config file (`cluster/serve.*.yaml`): its first application's deployments."""
        config = yaml.safe_load(Path(path).read_text())
        deployments = config["applications"][0].get("deployments") or []
        return cls.from_user_configs({d["name"]: d.get("user_config") or {} for d in deployments})


def weight_versions(user_configs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Bundle name -> the version a set of user_configs serves (the default where none is named); each validated."""
    from pipeline.table import STAGES

    return {
        stage.bundle: stage.user_config.model_validate(user_configs.get(stage.deployment) or {}).version
        for stage in STAGES if stage.bundle is not None
    }
