"""`@serve.batch` in the model deployments: a shared forward pass answers each request as it would alone.

These call the deployments' batch code in-process with the shipped v1 weights; the served path
(Serve's own batch queue, retuned through user_config) is tested in tests/serve/test_batching.py.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from deployments.batching import Failed, answer_batch, unwrap
from deployments.compression import CompressionResilientDeployment
from deployments.fusion import FusionDeployment
from deployments.triage import FastTriageDeployment
from media import decode_media
from pipeline.config import KeyframeConfig, TriageDeploymentConfig, VisualDeploymentConfig
from pipeline.keyframes import select_keyframes
from pipeline.results import BranchResult
from tests.mediagen import encode_audio, speech_like_audio, talking_face_video


def _replica(cls):
    replica = cls.func_or_class()
    replica.reconfigure({"version": "v1"})
    return replica


@pytest.fixture(scope="module")
def clips() -> list:
    """Three videos of different lengths (10, 15 and 20 sampled frames) and one audio-only upload."""
    videos = [
        decode_media(talking_face_video(seconds=s, size=(320, 240), fps=25, with_audio=True, seed=seed))
        for s, seed in ((2.0, 3), (1.0, 4), (1.5, 5))
    ]
    audio = decode_media(encode_audio(speech_like_audio(1.0, seed=6), fmt="wav"))
    return [videos[0], videos[1], audio, videos[2]]


def _same_branch(batched: BranchResult, alone: BranchResult) -> None:
    assert batched.status == alone.status and batched.reason == alone.reason
    if alone.status != "ok":
        return
    assert batched.score == pytest.approx(alone.score, abs=1e-5)
    np.testing.assert_allclose(batched.features, alone.features, atol=1e-4, rtol=1e-4)
    details = {k: v for k, v in batched.details.items() if k != "batch_size"}
    for key, value in alone.details.items():
        if key == "batch_size":
            continue
        assert details.pop(key) == pytest.approx(value, abs=1e-5), key
    assert not details


def test_triage_batch_matches_each_clip_alone(clips) -> None:
    assert len({clip.n_frames for clip in clips}) == 4  # 20, 10, 0 (audio) and 15 frames: padding is exercised
    replica = _replica(FastTriageDeployment)
    bundle = replica.weights.choose()
    batched = replica._run_batch(bundle, clips)
    alone = [replica._run_batch(bundle, [clip])[0] for clip in clips]
    for b, a, clip in zip(batched, alone, clips):
        _same_branch(b.branch, a.branch)
        assert b.early_exit == a.early_exit
        assert b.frame_scores.shape == (clip.n_frames,)
        np.testing.assert_allclose(b.frame_scores, a.frame_scores, atol=1e-5)
    assert [b.branch.details.get("batch_size") for b in batched] == [3, 3, None, 3]
    assert alone[0].branch.details["batch_size"] == 1
    assert batched[2].branch.status == "skipped"


def test_compression_batch_matches_each_clip_alone(clips) -> None:
    replica = _replica(CompressionResilientDeployment)
    triage = _replica(FastTriageDeployment)
    # One clip with its selected keyframes, the others by the even spread used without keyframes.
    first = triage._run_batch(triage.weights.choose(), [clips[0]])[0]
    keyframes = [select_keyframes(clips[0], first.frame_scores, KeyframeConfig()), None, None, None]
    assert keyframes[0].keyframes
    bundle = replica.weights.choose()
    batched = replica._run_batch(bundle, clips, keyframes)
    alone = [replica._run_batch(bundle, [clip], [kf])[0] for clip, kf in zip(clips, keyframes)]
    for b, a in zip(batched, alone):
        _same_branch(b, a)
    assert batched[0].details["frames_analyzed"] == len(set(keyframes[0].indices))
    assert batched[1].details["frames_analyzed"] == 8  # max_crops
    assert [b.details.get("batch_size") for b in batched] == [3, 3, None, 3]


def test_fusion_batch_matches_each_request_alone_and_a_bad_request_fails_alone(clips) -> None:
    triage, visual, fusion = _replica(FastTriageDeployment), _replica(CompressionResilientDeployment), _replica(FusionDeployment)
    requests = []
    for clip in clips:
        branches = [
            triage._run_batch(triage.weights.choose(), [clip])[0].branch,
            visual._run_batch(visual.weights.choose(), [clip], [None])[0],
        ]
        requests.append(branches)
    assert all(b.status == "skipped" for b in requests[2])
    bundle = fusion.weights.choose()
    with pytest.raises(ValueError, match="at least one modality"):
        fusion._run_batch(bundle, requests)  # the shared call fails as a whole ...
    answers = answer_batch(fusion._run_batch, [bundle] * len(requests), requests)
    assert isinstance(answers[2], Failed)  # ... so each request is answered alone, and only this one fails
    with pytest.raises(ValueError, match="at least one modality"):
        unwrap(answers[2])
    for i in (0, 1, 3):
        alone = fusion._run_batch(bundle, [requests[i]])[0]
        assert answers[i].probability == pytest.approx(alone.probability, abs=1e-6)
        assert answers[i].gate_weights == pytest.approx(alone.gate_weights, abs=1e-4)
    good = [requests[i] for i in (0, 1, 3)]
    shared = fusion._run_batch(bundle, good)
    assert [r.probability for r in shared] == pytest.approx([r.probability for r in answers if not isinstance(r, Failed)], abs=1e-6)


def test_answer_batch_runs_one_call_per_weights_version() -> None:
    calls = []

    def run_batch(bundle, xs):
        calls.append((bundle, list(xs)))
        return [f"{bundle}:{x}" for x in xs]

    answers = answer_batch(run_batch, ["v1", "canary", "v1", "v1"], [1, 2, 3, 4])
    assert answers == ["v1:1", "canary:2", "v1:3", "v1:4"]
    assert calls == [("v1", [1, 3, 4]), ("canary", [2])]


def test_batch_settings_come_from_user_config() -> None:
    with pytest.raises(ValueError):
        TriageDeploymentConfig.model_validate({"max_batch_size": 0})
    with pytest.raises(ValueError):
        VisualDeploymentConfig.model_validate({"batch_wait_timeout_s": -1})
    replica = FastTriageDeployment.func_or_class()
    replica.reconfigure({"version": "v1", "max_batch_size": 8, "batch_wait_timeout_s": 0.02})
    assert replica._batched._get_max_batch_size() == 8
    assert replica._batched._get_batch_wait_timeout_s() == 0.02
    replica.reconfigure({"version": "v1"})
    assert replica._batched._get_max_batch_size() == 1  # the default: every request alone


def test_a_clip_that_never_arrives_is_lost_work_not_a_hang() -> None:
    """A clip whose owner died with its node can hang until the node is declared dead: resolve gives up
    and the orchestrator re-runs the analysis (ClipUnavailable is LOST_WORK), instead of the proxy's 408."""
    from deployments.batching import ClipUnavailable, resolve
    from deployments.orchestration import LOST_WORK

    async def never_and_now() -> tuple[BaseException | None, object]:
        never = asyncio.get_running_loop().create_future()
        try:
            await resolve([never], timeout_s=0.05)
        except ClipUnavailable as exc:
            lost: BaseException | None = exc
        else:
            lost = None
        ready = asyncio.get_running_loop().create_future()
        ready.set_result("clip")
        return lost, await resolve([ready], timeout_s=0.05)

    lost, clip = asyncio.run(never_and_now())
    assert isinstance(lost, LOST_WORK)
    assert clip == "clip"
