"""The stage table: each stage's deployment, weight bundle, config models and whether a request may pin it.

Declared once; the ingress (pins, readiness), the profile readers, training, the benchmark and
the tests read it from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from media.config import DecodeConfig
from pipeline.config import (
    AVConfig,
    AVDeploymentConfig,
    FuseConfig,
    FusionDeploymentConfig,
    IngressConfig,
    KeyframeConfig,
    TriageConfig,
    TriageDeploymentConfig,
    VerdictConfig,
    VisualConfig,
    VisualDeploymentConfig,
)


@dataclass(frozen=True)
class Stage:
    name: str  # the stage, as `PipelineConfig` and `analyze` name it
    deployment: str  # the Serve deployment that runs it
    bundle: str | None  # weight bundle under weights/, None for stages without learned weights
    config: type[BaseModel]  # the stage's own settings
    user_config: type[BaseModel]  # the deployment's whole user_config
    pinnable: bool  # a request may pin its weights version (X-Model-Versions)


STAGES: tuple[Stage, ...] = (
    Stage("decode", "MediaDecoder", None, DecodeConfig, DecodeConfig, False),
    Stage("triage", "FastTriage", "fast_triage", TriageConfig, TriageDeploymentConfig, True),
    Stage("keyframes", "KeyframeSelector", None, KeyframeConfig, KeyframeConfig, False),
    Stage("visual", "CompressionResilient", "compression_resilient", VisualConfig, VisualDeploymentConfig, True),
    Stage("av", "AVAlignment", "av_alignment", AVConfig, AVDeploymentConfig, True),
    Stage("fuse", "Fusion", "fusion", FuseConfig, FusionDeploymentConfig, True),
    Stage("verdict", "Ingress", None, VerdictConfig, IngressConfig, False),
)

BY_NAME = {s.name: s for s in STAGES}
BY_DEPLOYMENT = {s.deployment: s for s in STAGES}
PINNABLE = tuple(s.deployment for s in STAGES if s.pinnable)
MODEL_BUNDLES = {s.deployment: s.bundle for s in STAGES if s.bundle is not None}  # deployment -> bundle
# The deployments that run a stage behind a handle, in the graph's order (the verdict runs in the ingress).
COMPUTE_DEPLOYMENTS = tuple(s.deployment for s in STAGES if s.deployment != "Ingress")
