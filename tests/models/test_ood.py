"""Out-of-distribution statistics: the distance, their place in a bundle (checksummed), the fit, and the verdict."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from models.bundle import OOD_FILE, WeightsError, attach_ood, load_bundle
from models.ood import OODStats
from pipeline.config import VerdictConfig
from tests.pipeline.test_abstention import _analysis
from pipeline.verdict import respond
from training.ood import fit_stats

REPO = Path(__file__).resolve().parents[2]


def _stats(dim: int = 4, threshold: float = 3.0) -> OODStats:
    return OODStats(np.zeros(dim), np.eye(dim), threshold)


def test_distance_is_mahalanobis() -> None:
    stats = OODStats(np.array([1.0, 0.0]), np.diag([1.0, 4.0]), 2.0)
    assert stats.distance(np.array([1.0, 0.0])) == 0.0
    assert stats.distance(np.array([4.0, 0.0])) == pytest.approx(3.0)
    assert stats.distance(np.array([1.0, 1.0])) == pytest.approx(2.0)  # precision 4 along the second axis
    with pytest.raises(ValueError):
        stats.distance(np.zeros(3))


def test_stats_travel_in_the_bundle_checksummed(tmp_path: Path) -> None:
    bundle = tmp_path / "compression_resilient" / "v1"
    shutil.copytree(REPO / "weights" / "compression_resilient" / "v1", bundle)
    before = (bundle / "model.safetensors").read_bytes()
    attach_ood(bundle, _stats(dim=3, threshold=1.5))
    loaded = load_bundle(bundle)
    assert loaded.ood is not None and loaded.ood.threshold == 1.5 and loaded.ood.mean.shape == (1, 3)
    assert (bundle / "model.safetensors").read_bytes() == before  # the weights are untouched
    blob = bytearray((bundle / OOD_FILE).read_bytes())
    blob[-1] ^= 1
    (bundle / OOD_FILE).write_bytes(bytes(blob))
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        load_bundle(bundle)


def test_fit_flags_about_the_quantile_of_authentic_validation_and_far_points() -> None:
    rng = np.random.default_rng(0)
    train, val = rng.normal(size=(400, 6)), rng.normal(size=(200, 6))
    stats, report = fit_stats(train, val, quantile=0.95)
    flagged = np.mean([stats.distance(x) > stats.threshold for x in val])
    assert flagged == pytest.approx(0.05, abs=0.01)
    assert stats.distance(np.full(6, 5.0)) > stats.threshold
    assert report["train_files"] == 400 and report["val_files"] == 200
    with pytest.raises(ValueError):
        fit_stats(train[:1], val)


def test_an_out_of_distribution_branch_makes_the_verdict_uncertain() -> None:
    analysis = _analysis(0.97)
    assert respond(analysis, VerdictConfig(), "r", None).verdict == "fake"
    analysis.visual.out_of_distribution = True
    answer = respond(analysis, VerdictConfig(), "r", None)
    assert answer.verdict == "uncertain" and answer.fake_probability == 0.97
    (reason,) = [r for r in answer.reasons if r.code == "out_of_distribution"]
    assert reason.decisive and reason.modalities == ["visual"]


def test_class_conditional_stats_accept_both_classes_and_flag_what_is_far_from_both() -> None:
    rng = np.random.default_rng(1)
    authentic, spoofed = rng.normal(size=(300, 5)), rng.normal(size=(300, 5)) + 6.0
    train = np.concatenate([authentic, spoofed])
    labels = np.array([0] * 300 + [1] * 300)
    val = np.concatenate([rng.normal(size=(100, 5)), rng.normal(size=(100, 5)) + 6.0])
    stats, report = fit_stats(train, val, quantile=0.99, train_labels=labels)
    assert stats.components == 2 and report["classes"] == [0, 1]
    assert stats.distance(np.full(5, 6.0)) < stats.threshold  # a typical spoof is in distribution
    assert stats.distance(np.full(5, -6.0)) > stats.threshold  # far from both classes
    authentic_only, _ = fit_stats(authentic, val[:100], quantile=0.99)
    assert authentic_only.distance(np.full(5, 6.0)) > authentic_only.threshold  # what a one-class fit would do
    with pytest.raises(ValueError, match="per class"):
        fit_stats(train, val, train_labels=np.array([0] * 599 + [1]))


def test_one_and_several_components_load_from_the_bundle_tensors() -> None:
    single = OODStats.from_tensors(_stats(dim=3).to_tensors())
    double = OODStats(np.zeros((2, 3)), np.stack([np.eye(3)] * 2), 1.0)
    assert single.components == 1 and OODStats.from_tensors(double.to_tensors()).components == 2
    with pytest.raises(ValueError, match="shapes do not fit"):
        OODStats(np.zeros((2, 3)), np.eye(3), 1.0)


def test_a_strange_voice_abstains_and_the_verdict_rests_on_the_rest() -> None:
    from pipeline.av import judge_voice
    from pipeline.results import BranchResult

    stats = _stats(dim=4, threshold=3.0)
    near = judge_voice(BranchResult("audio", "ok", score=0.9), np.zeros(4), stats)
    assert (near.status, near.out_of_distribution, near.details["ood_distance"]) == ("ok", False, 0.0)
    far = judge_voice(BranchResult("audio", "ok", score=0.9), np.full(4, 10.0), stats)
    assert (far.status, far.code, far.out_of_distribution, far.score) == ("skipped", "out_of_distribution", True, 0.9)
    assert far.details["ood_distance"] == pytest.approx(20.0) and "not used" in far.reason

    analysis = _analysis(0.1)
    analysis.av.audio = far
    answer = respond(analysis, VerdictConfig(), "r", None)
    assert answer.verdict == "real"  # the other modalities had evidence
    (reason,) = [r for r in answer.reasons if r.code == "out_of_distribution"]
    assert not reason.decisive and reason.modalities == ["audio"]
    assert answer.modalities["audio"].status == "skipped" and answer.modalities["audio"].score == 0.9


def test_a_recording_chain_the_head_never_heard_abstains_even_where_its_embedding_looks_familiar(
    tmp_path: Path,
) -> None:
    """The embedding test passes (distance 0), the input's channel profile does not: the branch abstains."""
    from models.bundle import CHANNEL_OOD_FILE
    from pipeline.av import judge_voice
    from pipeline.results import BranchResult
    from tests.models.test_channel import _lowpass, _voice
    from models.channel import channel_profile

    rng = np.random.default_rng(0)
    takes = [_voice(seed=s) * rng.uniform(0.2, 1.0) for s in range(40)]
    profiles = np.stack([channel_profile(t) for t in takes])
    channel, _ = fit_stats(profiles[:30], profiles[30:], quantile=1.0)
    embedding = _stats(dim=4, threshold=3.0)

    familiar = judge_voice(BranchResult("audio", "ok", score=0.9), np.zeros(4), embedding, _voice(seed=99), channel)
    assert (familiar.status, familiar.out_of_distribution) == ("ok", False)
    assert familiar.details["channel_distance"] <= familiar.details["channel_threshold"]

    phone = _lowpass(_voice(seed=99), 3400.0) + 0.01 * rng.standard_normal(32_000).astype(np.float32)
    strange = judge_voice(BranchResult("audio", "ok", score=0.9), np.zeros(4), embedding, phone, channel)
    assert (strange.status, strange.code, strange.out_of_distribution) == ("skipped", "out_of_distribution", True)
    assert strange.details["ood_distance"] == 0.0  # the embedding alone would have let it through
    assert strange.details["channel_distance"] > strange.details["channel_threshold"]
    assert "recording unlike" in strange.reason and "voice unlike" not in strange.reason

    bundle = tmp_path / "av_alignment" / "v3"
    shutil.copytree(REPO / "weights" / "av_alignment" / "v3", bundle)
    attach_ood(bundle, channel, CHANNEL_OOD_FILE)
    loaded = load_bundle(bundle)
    assert loaded.ood is not None and loaded.channel_ood is not None
    assert loaded.channel_ood.threshold == pytest.approx(channel.threshold)
    with pytest.raises(ValueError, match="statistics go in"):
        attach_ood(bundle, channel, "model.safetensors")
    blob = bytearray((bundle / CHANNEL_OOD_FILE).read_bytes())
    blob[-1] ^= 1
    (bundle / CHANNEL_OOD_FILE).write_bytes(bytes(blob))
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        load_bundle(bundle)


@dataclass
class _Heard:
    """An audio-only upload as the AV stage reads it."""

    audio: np.ndarray
    kind: str = "audio"
    has_audio: bool = True
    face_coverage: float = 0.0
    sample_rate: int = 16_000
    n_frames: int = 0


def test_the_speech_expert_answers_where_the_first_head_abstains_and_only_on_speech_it_learned(tmp_path: Path) -> None:
    """AV v5: a second spoof head, consulted where the first one's tests fail, answers only if its own pass."""
    import torch

    from models.av_alignment import TEST_CONFIG, build_av_alignment
    from models.bundle import CHANNEL_OOD_FILE, EXPERT_CHANNEL_OOD_FILE, EXPERT_OOD_FILE, save_bundle
    from models.channel import PROFILE_SIZE
    from models.spoof import SpectralSpoofConfig, SpectralSpoofNet
    from pipeline.av import run_av, run_av_bundle
    from pipeline.config import AVConfig
    from pipeline.results import sigmoid
    from tests.models.test_channel import _voice
    from training.spoof import attach_spoof_net

    torch.manual_seed(0)
    expert_config = SpectralSpoofConfig(channels=(4, 8), embed_dim=8)
    config = AVConfig(min_speech_s=0.0)
    clip = _Heard(_voice(seconds=2.0, seed=5))
    d, e = TEST_CONFIG.d_model, expert_config.embed_dim
    passes, fails = (lambda dim: _stats(dim, float("inf"))), (lambda dim: _stats(dim, -1.0))

    # The base bundle (v4's shape): one spoof head with both of its tests.
    base = tmp_path / "av_alignment" / "v4"
    save_bundle(build_av_alignment(TEST_CONFIG).eval(), base, arch="av_alignment", config=TEST_CONFIG, trained=True,
                card_text="base")
    attach_ood(base, fails(d))
    attach_ood(base, passes(PROFILE_SIZE), CHANNEL_OOD_FILE)
    out = attach_spoof_net(base, SpectralSpoofNet(expert_config).eval(), tmp_path / "av_alignment" / "v5", "v5", {},
                           as_expert=True)
    loaded = load_bundle(out)
    assert loaded.config.speech_expert == expert_config and loaded.config.spoof_net is None
    assert loaded.ood is not None and loaded.ood.threshold == -1.0 and loaded.channel_ood is not None  # kept
    model = loaded.model
    base_model = load_bundle(base).model
    assert torch.equal(model.spoof_head.weight, base_model.spoof_head.weight)  # the first head is v4's, untouched
    with torch.inference_mode():
        expert_logit = float(model.expert_spoof(torch.from_numpy(clip.audio).unsqueeze(0)).spoof_logit[0])

    # Without the expert's statistics the first head's abstention stands, exactly as in v4.
    alone = run_av_bundle(loaded, clip, config).audio
    assert (alone.status, alone.code) == ("skipped", "out_of_distribution") and "head" not in alone.details

    # The expert's tests pass: it answers, and says so.
    attach_ood(out, passes(e), EXPERT_OOD_FILE)
    attach_ood(out, passes(PROFILE_SIZE), EXPERT_CHANNEL_OOD_FILE)
    answered = run_av_bundle(load_bundle(out), clip, config).audio
    assert (answered.status, answered.out_of_distribution, answered.details["head"]) == ("ok", False, "speech_expert")
    assert answered.score == pytest.approx(sigmoid(expert_logit)) and answered.features[0] == pytest.approx(expert_logit)
    assert "unlike" in answered.details["first_head_reason"] and answered.features.shape == (1 + e,)

    # Its recording test fails: the branch stays abstained, with both heads' reasons and distances.
    both = run_av(model, clip, config, ood=fails(d), channel_ood=passes(PROFILE_SIZE), expert_ood=passes(e),
                  expert_channel_ood=fails(PROFILE_SIZE)).audio
    assert (both.status, both.code, both.out_of_distribution) == ("skipped", "out_of_distribution", True)
    assert "speech expert abstains too" in both.reason and "expert_channel_distance" in both.details

    # The first head's tests pass: it answers and the expert is not consulted.
    first = run_av(model, clip, config, ood=passes(d), channel_ood=passes(PROFILE_SIZE), expert_ood=passes(e),
                   expert_channel_ood=passes(PROFILE_SIZE)).audio
    assert first.status == "ok" and "head" not in first.details and first.score != pytest.approx(sigmoid(expert_logit))

    # A bundle without an expert ignores expert statistics.
    plain = run_av(base_model, clip, config, ood=fails(d), expert_ood=passes(e), expert_channel_ood=passes(PROFILE_SIZE))
    assert plain.audio.code == "out_of_distribution" and "head" not in plain.audio.details
