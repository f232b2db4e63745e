"""Settings declared once: strict user_config models, the Serve profiles, and the stage table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from media.config import DecodeConfig
from pipeline.config import (
    DEFAULT_WEIGHTS_VERSION,
    AVConfig,
    IngressConfig,
    KeyframeConfig,
    PipelineConfig,
    TriageConfig,
    TriageDeploymentConfig,
    VerdictConfig,
    VisualConfig,
    VisualDeploymentConfig,
    stage_part,
    weight_versions,
)
from pipeline.table import BY_DEPLOYMENT, BY_NAME, MODEL_BUNDLES, PINNABLE, STAGES

ROOT = Path(__file__).resolve().parents[2]
PROFILES = [ROOT / "cluster" / "serve.cpu.yaml", ROOT / "cluster" / "serve.gpu.yaml"]
# Serving deployments outside the analysis pipeline: they have user_configs of their own.
SERVING_ONLY = {"JobQueue", "JobWorker", "Gatekeeper"}


def deployments(profile: Path) -> dict[str, dict[str, Any]]:
    config = yaml.safe_load(profile.read_text())
    return {d["name"]: d for d in config["applications"][0]["deployments"]}


def user_configs(profile: Path) -> dict[str, dict[str, Any]]:
    return {name: d.get("user_config") or {} for name, d in deployments(profile).items()}


# ---- strict models ---------------------------------------------------------------------------


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.deployment)
def test_every_user_config_model_rejects_an_unknown_key(stage: Any) -> None:
    stage.user_config.model_validate({})  # the defaults are valid
    with pytest.raises(ValidationError, match="verison"):
        stage.user_config.model_validate({"verison": "v1"})


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_every_stage_config_rejects_an_unknown_key(stage: Any) -> None:
    with pytest.raises(ValidationError, match="typo_key"):
        stage.config.model_validate({"typo_key": 1})


def test_canary_rejects_an_unknown_key() -> None:
    TriageDeploymentConfig.model_validate({"canary": {"version": "v0", "fraction": 0.1}})
    with pytest.raises(ValidationError, match="fractoin"):
        TriageDeploymentConfig.model_validate({"canary": {"version": "v0", "fractoin": 0.1}})


def test_triage_config_rejects_low_above_high() -> None:
    TriageConfig(early_exit_low=0.4, early_exit_high=0.4)  # equal bounds are allowed
    with pytest.raises(ValidationError, match="early_exit_low"):
        TriageConfig(early_exit_low=0.9, early_exit_high=0.1)
    with pytest.raises(ValidationError, match="early_exit_low"):
        TriageDeploymentConfig.model_validate({"early_exit_low": 0.99, "early_exit_high": 0.98})


@pytest.mark.parametrize(
    ("model", "values"),
    [
        (TriageConfig, {"early_exit_high": 1.5}),
        (KeyframeConfig, {"k": 0}),
        (VisualConfig, {"max_crops": 0}),
        (AVConfig, {"max_audio_s": 0}),
        (VerdictConfig, {"uncertain_margin": 0.5}),
        (VerdictConfig, {"decision_threshold": 1.0}),
        (IngressConfig, {"max_upload_bytes": 0}),
        (VisualDeploymentConfig, {"max_batch_size": 0}),
    ],
)
def test_out_of_range_values_are_rejected(model: type[BaseModel], values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        model.model_validate(values)


# ---- stage_part and weight_versions ----------------------------------------------------------


def test_stage_part_keeps_only_the_stage_settings() -> None:
    deployment = TriageDeploymentConfig(version="v0", early_exit_low=0.1, early_exit_high=0.9, max_batch_size=4)
    part = stage_part(deployment, TriageConfig)
    assert type(part) is TriageConfig
    assert part == TriageConfig(early_exit_low=0.1, early_exit_high=0.9)


def test_stage_part_of_the_ingress_is_the_verdict_config() -> None:
    ingress = IngressConfig(max_upload_bytes=10, decision_threshold=0.6, uncertain_margin=0.05, mismatch_threshold=0.7)
    assert stage_part(ingress, VerdictConfig) == VerdictConfig(
        decision_threshold=0.6, uncertain_margin=0.05, mismatch_threshold=0.7
    )


def test_stage_part_of_a_stage_config_is_itself() -> None:
    decode = DecodeConfig(max_frames=7, frame_threads=False)
    assert stage_part(decode, DecodeConfig) == decode


def test_weight_versions_defaults_and_overrides() -> None:
    bundles = {s.bundle for s in STAGES if s.bundle is not None}
    assert weight_versions({}) == {b: DEFAULT_WEIGHTS_VERSION for b in bundles}
    chosen = weight_versions({
        "FastTriage": {"version": "v0", "early_exit_low": 0.1},
        "Fusion": {"version": "v3", "canary": {"version": "v4", "fraction": 0.5}},
        "KeyframeSelector": {"k": 2},
    })
    assert chosen == {"fast_triage": "v0", "compression_resilient": "v1", "av_alignment": "v1", "fusion": "v3"}


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_weight_versions_of_the_profiles(profile: Path) -> None:
    configs = user_configs(profile)
    expected = {MODEL_BUNDLES[name]: configs[name]["version"] for name in MODEL_BUNDLES}
    assert weight_versions(configs) == expected


# ---- the Serve profiles ----------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_from_serve_config_reads_every_stage_setting_written_there(profile: Path) -> None:
    config = PipelineConfig.from_serve_config(profile)
    configs = user_configs(profile)
    checked = 0
    for stage in STAGES:
        part = getattr(config, stage.name)
        assert type(part) is stage.config
        for key, value in configs[stage.deployment].items():
            if key in stage.config.model_fields:
                assert getattr(part, key) == value, (stage.deployment, key)
                checked += 1
    assert checked >= 15  # the profiles do set most stage settings


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_from_serve_config_spot_check(profile: Path) -> None:
    config = PipelineConfig.from_serve_config(profile)
    assert config.decode.analysis_fps == 10.0
    assert config.decode.max_frames == 100
    assert config.decode.face_detect_every == 20
    assert config.decode.frame_threads is True
    assert (config.triage.early_exit_low, config.triage.early_exit_high) == (0.02, 1.0)  # triage alone never says fake
    assert config.keyframes.k == 4
    assert config.visual.max_crops == 8
    assert config.av.max_audio_s == 30.0
    assert config.verdict == VerdictConfig(decision_threshold=0.5, uncertain_margin=0.1, mismatch_threshold=0.5)


def test_from_serve_config_reads_what_differs_from_the_defaults(tmp_path: Path) -> None:
    config = yaml.safe_load(PROFILES[0].read_text())
    for d in config["applications"][0]["deployments"]:
        if d["name"] == "KeyframeSelector":
            d["user_config"] = {"k": 9, "hotspot_threshold": 0.25}
        if d["name"] == "Ingress":
            d["user_config"]["uncertain_margin"] = 0.2
        if d["name"] == "AVAlignment":
            d.pop("user_config")
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    read = PipelineConfig.from_serve_config(path)
    assert read.keyframes == KeyframeConfig(k=9, hotspot_threshold=0.25)
    assert read.verdict.uncertain_margin == 0.2
    assert read.av == AVConfig()  # no user_config: the defaults


@pytest.mark.parametrize(
    ("deployment", "typo"),
    [("FastTriage", "early_exit_hgh"), ("MediaDecoder", "max_frame"), ("Ingress", "decision_treshold"),
     ("Fusion", "max_batchsize"), ("KeyframeSelector", "kk")],
)
def test_a_typo_in_a_profile_raises_naming_the_key(tmp_path: Path, deployment: str, typo: str) -> None:
    config = yaml.safe_load(PROFILES[0].read_text())
    (d,) = [d for d in config["applications"][0]["deployments"] if d["name"] == deployment]
    d["user_config"][typo] = 1
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ValidationError, match=typo):
        PipelineConfig.from_serve_config(path)


def test_from_user_configs_with_nothing_is_the_defaults() -> None:
    assert PipelineConfig.from_user_configs({}) == PipelineConfig()


def test_pipeline_config_rejects_an_unknown_stage() -> None:
    with pytest.raises(ValidationError, match="triag"):
        PipelineConfig.model_validate({"triag": {}})


# ---- the stage table -------------------------------------------------------------------------


def test_stage_table_is_consistent() -> None:
    assert [s.name for s in STAGES] == list(PipelineConfig.model_fields)
    assert len(BY_NAME) == len(BY_DEPLOYMENT) == len(STAGES)
    for stage in STAGES:
        # the stage's settings are a part of its deployment's user_config
        assert set(stage.config.model_fields) <= set(stage.user_config.model_fields), stage.deployment
        assert ("version" in stage.user_config.model_fields) == (stage.bundle is not None), stage.deployment


def test_pinnable_is_exactly_the_deployments_with_weights() -> None:
    assert set(PINNABLE) == {s.deployment for s in STAGES if s.bundle is not None}
    assert set(PINNABLE) == {"FastTriage", "CompressionResilient", "AVAlignment", "Fusion"}
    assert set(MODEL_BUNDLES) == set(PINNABLE)
    assert all((ROOT / "weights" / bundle).is_dir() for bundle in MODEL_BUNDLES.values())


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_the_stage_table_matches_the_profiles(profile: Path) -> None:
    found = deployments(profile)
    in_table = {s.deployment for s in STAGES}
    assert in_table <= set(found), in_table - set(found)
    assert set(found) - in_table <= SERVING_ONLY, set(found) - in_table
    for stage in STAGES:
        user_config = found[stage.deployment].get("user_config") or {}
        assert ("version" in user_config) == (stage.bundle is not None), stage.deployment
        stage.user_config.model_validate(user_config)  # each profile validates against the table's model


def test_weight_versions_refuses_a_typo() -> None:
    with pytest.raises(ValidationError, match="verison"):
        weight_versions({"FastTriage": {"verison": "v0"}})
