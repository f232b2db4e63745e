"""`serve run graph:app` has no YAML: Serve then never calls `reconfigure`, so every deployment must
be able to answer from its constructor alone, with its config model's defaults and the shipped weights."""

from __future__ import annotations

import pytest

from deployments.av_alignment import AVAlignmentDeployment
from deployments.compression import CompressionResilientDeployment
from deployments.fusion import FusionDeployment
from deployments.keyframes import KeyframeSelectorDeployment
from deployments.triage import FastTriageDeployment
from pipeline.config import DEFAULT_WEIGHTS_VERSION, KeyframeConfig

MODEL_DEPLOYMENTS = (FastTriageDeployment, CompressionResilientDeployment, AVAlignmentDeployment, FusionDeployment)


@pytest.mark.parametrize("deployment", MODEL_DEPLOYMENTS, ids=lambda d: d.name)
def test_model_deployment_serves_the_default_weights_without_user_config(deployment) -> None:
    replica = deployment.func_or_class()  # no reconfigure() call, as under `serve run graph:app`
    info = replica.info()
    assert info.version is not None and info.version.endswith(f"/{DEFAULT_WEIGHTS_VERSION}")
    assert info.trained is True and len(info.sha256) == 64


def test_keyframe_selector_starts_with_its_defaults() -> None:
    assert KeyframeSelectorDeployment.func_or_class().config == KeyframeConfig()
