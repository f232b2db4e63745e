"""`LocalPipeline` with the shipped v1 weights on generated uploads, and the batched stage functions."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from skimage.data import astronaut

from media.clip import Clip
from pipeline.analyze import Analysis
from pipeline.config import TriageConfig, VisualConfig
from pipeline.decode import decode
from pipeline.fuse import run_fusion
from pipeline.local import LocalPipeline
from pipeline.results import BranchResult
from pipeline.schemas import AnalyzeResponse
from pipeline.triage import run_triage
from pipeline.visual import run_visual
from tests.mediagen import (
    encode_audio,
    encode_image,
    speech_like_audio,
    talking_face_video,
)

# kind -> (triage, visual, av, audio) statuses of the generated upload
EXPECTED = {
    "video": {"triage": "ok", "visual": "ok", "av": "ok", "audio": "ok"},
    "image": {"triage": "skipped", "visual": "ok", "av": "skipped", "audio": "skipped"},
    "audio": {"triage": "skipped", "visual": "skipped", "av": "skipped", "audio": "ok"},
}


@pytest.fixture(scope="module")
def local() -> LocalPipeline:
    return LocalPipeline.load(versions="v1", device="cpu")


@pytest.fixture(scope="module")
def uploads() -> dict[str, bytes]:
    return {
        "video": talking_face_video(seconds=2.0, size=(320, 240), fps=10, seed=3),
        "image": encode_image(np.ascontiguousarray(astronaut()[::2, ::2]), "jpeg"),
        "audio": encode_audio(speech_like_audio(2.0, seed=1), fmt="wav"),
    }


@pytest.fixture(scope="module")
def clips(local: LocalPipeline, uploads: dict[str, bytes]) -> dict[str, Clip]:
    """Each upload decoded once, with the pipeline's own decode config."""
    return {kind: decode(data, local.config.decode) for kind, data in uploads.items()}


@pytest.fixture(scope="module")
def runs(local: LocalPipeline, uploads: dict[str, bytes]) -> dict[str, Analysis]:
    """`run(bytes)` once per kind (it decodes again, as a request would)."""
    return {kind: local.run(data) for kind, data in uploads.items()}


@pytest.fixture(scope="module")
def second_video(local: LocalPipeline) -> Clip:
    """A shorter, different clip: batching must pack clips of different lengths."""
    return decode(talking_face_video(seconds=1.2, size=(320, 240), fps=10, seed=4), local.config.decode)


def test_loads_the_shipped_v1_weights(local: LocalPipeline) -> None:
    assert local.versions == {
        "fast_triage": "fast_triage/v1", "compression_resilient": "compression_resilient/v1",
        "av_alignment": "av_alignment/v1", "fusion": "fusion/v1",
    }
    assert all(info.trained for name, info in local.infos.items() if name != "KeyframeSelector")


@pytest.mark.parametrize("kind", ["video", "image", "audio"])
def test_run_answers_a_valid_response(local: LocalPipeline, runs: dict[str, Analysis], kind: str) -> None:
    analysis = runs[kind]
    assert analysis.meta.kind == kind
    assert analysis.failures == {}
    assert not analysis.early_exit  # these clips are not settled by triage; every branch runs
    response = AnalyzeResponse.model_validate(local.respond(analysis, "r", f"upload.{kind}").model_dump())
    assert {name: m.status for name, m in response.modalities.items()} == EXPECTED[kind]
    assert 0.0 <= response.fake_probability <= 1.0
    assert response.fake_probability == analysis.fused.probability
    assert response.verdict in {"fake", "real", "uncertain"}
    assert response.media.kind == kind
    assert response.models["Fusion"].version == "fusion/v1"
    ran = {"video": {"FastTriage", "KeyframeSelector", "CompressionResilient", "AVAlignment", "Fusion"},
           "image": {"CompressionResilient", "Fusion"}, "audio": {"AVAlignment", "Fusion"}}[kind]
    assert set(response.models) == ran
    assert sum(response.gate_weights.values()) == pytest.approx(1.0, abs=1e-3)
    for name, status in EXPECTED[kind].items():
        if status == "skipped":
            assert response.gate_weights[name] == 0.0


def test_video_keyframes_and_artifacts(local: LocalPipeline, runs: dict[str, Analysis]) -> None:
    analysis = runs["video"]
    assert 1 <= len(analysis.keyframes.keyframes) <= local.config.keyframes.k
    response = local.respond(analysis)
    assert response.artifacts.visual_anomalies.frames_analyzed == len(set(analysis.keyframes.indices))
    assert response.artifacts.audio_mismatch.detected is not None
    assert response.media.frames_analyzed == 20


@pytest.mark.parametrize("kind", ["video", "image", "audio"])
def test_run_clip_agrees_with_run(
    local: LocalPipeline, runs: dict[str, Analysis], clips: dict[str, Clip], kind: str
) -> None:
    from_clip = local.run_clip(clips[kind])
    assert from_clip.meta.kind == kind
    assert from_clip.fused.probability == pytest.approx(runs[kind].fused.probability, abs=1e-6)
    assert {b.modality: b.status for b in from_clip.branches()} == {b.modality: b.status for b in runs[kind].branches()}


def _same_branch(a: BranchResult, b: BranchResult) -> None:
    assert a.status == b.status
    if a.status != "ok":
        return
    assert a.score == pytest.approx(b.score, abs=1e-5)
    np.testing.assert_allclose(a.features, b.features, atol=1e-5)
    np.testing.assert_allclose(a.item_scores, b.item_scores, atol=1e-5)


def test_triage_batch_agrees_with_single(local: LocalPipeline, clips: dict[str, Clip], second_video: Clip) -> None:
    model, config = local.model("fast_triage"), TriageConfig()
    together = [clips["video"], clips["audio"], second_video]
    batch = run_triage(model, together, config)
    assert batch[1].branch.status == "skipped"  # no frames: skipped, and no hole in the batch
    assert batch[0].frame_scores.shape == (clips["video"].n_frames,)
    assert batch[2].frame_scores.shape == (second_video.n_frames,)
    for clip, batched in zip(together, batch):
        (alone,) = run_triage(model, [clip], config)
        _same_branch(batched.branch, alone.branch)
        np.testing.assert_allclose(batched.frame_scores, alone.frame_scores, atol=1e-5)
        assert batched.early_exit == alone.early_exit


def test_visual_batch_agrees_with_single(local: LocalPipeline, clips: dict[str, Clip], second_video: Clip) -> None:
    model, config = local.model("compression_resilient"), VisualConfig()
    video_kf = local.keyframes(clips["video"], local.triage(clips["video"]).frame_scores)
    together = [clips["video"], clips["audio"], second_video, clips["image"]]
    keyframes = [video_kf, None, None, None]
    batch = run_visual(model, together, keyframes, config)
    assert batch[1].status == "skipped"
    assert batch[0].details["frames_analyzed"] == len(set(video_kf.indices))
    assert batch[2].details["frames_analyzed"] == min(second_video.n_frames, config.max_crops)
    assert batch[3].details["frames_analyzed"] == 1
    for clip, kf, batched in zip(together, keyframes, batch):
        (alone,) = run_visual(model, [clip], [kf], config)
        _same_branch(batched, alone)


def _ok_branches(analysis: Analysis) -> list[BranchResult]:
    return [b for b in analysis.branches() if b.status == "ok"]


def test_fusion_answers_a_mismatched_feature_size_with_the_mean(
    local: LocalPipeline, runs: dict[str, Analysis]
) -> None:
    model = local.model("fusion")
    good = _ok_branches(runs["video"])
    wrong = BranchResult("visual", "ok", score=0.9, features=np.zeros(good[1].features.shape[0] + 3, np.float32))
    bad = [good[0], wrong, *good[2:]]
    assert [b.modality for b in bad] == ["triage", "visual", "av", "audio"]

    mismatched, fine = run_fusion(model, [bad, good])
    assert mismatched.status == "failed"
    assert "visual" in mismatched.reason and "mismatch" in mismatched.reason
    assert mismatched.probability == pytest.approx(np.mean([b.score for b in bad]))
    assert mismatched.gate_weights == {}
    # the well-formed request in the same batch is fused as if alone
    (alone,) = run_fusion(model, [good])
    assert fine.status == "ok"
    assert fine.probability == pytest.approx(alone.probability, abs=1e-6)
    assert fine.probability == pytest.approx(runs["video"].fused.probability, abs=1e-6)


def test_fusion_answers_an_unknown_modality_with_the_mean(local: LocalPipeline) -> None:
    extra = BranchResult("thermal", "ok", score=0.2, features=np.zeros(4, np.float32))
    (result,) = run_fusion(local.model("fusion"), [[extra]])
    assert result.status == "failed" and "thermal" in result.reason
    assert result.probability == pytest.approx(0.2)


def test_fusion_needs_a_branch_that_ran(local: LocalPipeline) -> None:
    with pytest.raises(ValueError, match="at least one"):
        run_fusion(local.model("fusion"), [[BranchResult("visual", "skipped", reason="no frames")]])


def test_fusion_batch_agrees_with_single(local: LocalPipeline, runs: dict[str, Analysis]) -> None:
    model = local.model("fusion")
    requests: list[Any] = [_ok_branches(runs[kind]) for kind in ("video", "image", "audio")]
    batch = run_fusion(model, requests)
    for request, batched in zip(requests, batch):
        (alone,) = run_fusion(model, [request])
        assert batched.probability == pytest.approx(alone.probability, abs=1e-5)
        assert batched.gate_weights == pytest.approx(alone.gate_weights, abs=1e-3)


def test_a_pin_must_name_the_loaded_version(local: LocalPipeline, uploads: dict[str, bytes]) -> None:
    """As a served deployment answers an unknown pin with UnknownVersionError (HTTP 400), so does the local one."""
    import asyncio

    from pipeline.analyze import analyze
    from pipeline.results import UnknownVersionError

    calls = local.calls()
    with pytest.raises(UnknownVersionError, match="v0"):
        asyncio.run(analyze(uploads["image"], calls, pins={"CompressionResilient": "v0"}))
    answer = asyncio.run(analyze(uploads["image"], calls, pins={"CompressionResilient": "v1"}))
    assert answer.visual.status == "ok"
