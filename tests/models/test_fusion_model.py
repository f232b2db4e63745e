"""Fusion: masking invariance, gate weights, calibration and the feature-builder contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import (
    MODALITIES,
    MODELS,
    FusionConfig,
    audio_features,
    av_features,
    fusion_config_for,
    fusion_inputs,
    fusion_view,
    triage_features,
    visual_features,
)
from models.av_alignment import TEST_CONFIG as AV_TEST_CONFIG
from models.compression import TEST_CONFIG as COMPRESSION_TEST_CONFIG
from models.fusion import TEST_CONFIG as FUSION_TEST_CONFIG
from models.fusion import build_fusion


LINEAR_CONFIG = FusionConfig(read_embeddings=False, linear_only=True)


@pytest.fixture(params=["fusion", "fusion_test", "linear"])
def fusion(request):
    torch.manual_seed(0)
    if request.param == "linear":
        return build_fusion(LINEAR_CONFIG).eval()
    return MODELS.get(request.param)().eval()


def random_features(model, batch: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(batch, dim, generator=g) for name, dim in model.config.modalities}


def test_modality_order_is_the_contract(fusion) -> None:
    assert tuple(name for name, _ in fusion.config.modalities) == MODALITIES


@pytest.mark.parametrize(
    "present_row",
    [(True, True, True, True), (True, True, False, False), (False, False, False, True), (True, False, True, False)],
)
def test_masked_features_do_not_change_output(fusion, present_row) -> None:
    present = torch.tensor([present_row] * 2)
    features = random_features(fusion, 2, seed=0)
    changed = {k: v.clone() for k, v in features.items()}
    for i, name in enumerate(MODALITIES):
        if not present_row[i]:
            changed[name] = torch.randn_like(changed[name]) * 100
            changed[name][0, 0] = float("nan")
    dropped = {name: v for i, (name, v) in enumerate(features.items()) if present_row[i]}
    with torch.no_grad():
        base = fusion(features, present)
        other = fusion(changed, present)
        absent = fusion(dropped, present)
    for a, b, c in zip(base, other, absent, strict=True):
        assert torch.equal(a, b)
        assert torch.equal(a, c)
    # Present features do matter, so the equality above is not vacuous.
    name = MODALITIES[present_row.index(True)]
    changed_present = {**features, name: features[name] + 1.0}
    with torch.no_grad():
        assert not torch.equal(fusion(changed_present, present).logit, base.logit)


def test_gate_weights_zero_for_missing_and_sum_to_one(fusion) -> None:
    present = torch.tensor([[True, False, True, False], [False, True, False, False], [True, True, True, True]])
    with torch.no_grad():
        out = fusion(random_features(fusion, 3, seed=1), present)
    assert torch.all(out.gate_weights[~present] == 0.0)
    assert torch.all(out.gate_weights[present] > 0.0)
    torch.testing.assert_close(out.gate_weights.sum(dim=1), torch.ones(3))
    assert out.gate_weights[1, 1] == 1.0  # a single present modality takes all the weight
    torch.testing.assert_close(out.probability, torch.sigmoid(out.logit))


def test_no_present_modality_is_an_error(fusion) -> None:
    present = torch.tensor([[True, False, False, False], [False, False, False, False]])
    with pytest.raises(ValueError, match="at least one"):
        fusion(random_features(fusion, 2, seed=0), present)


def test_present_modality_without_features_is_an_error(fusion) -> None:
    features = random_features(fusion, 1, seed=0)
    del features["av"]
    with pytest.raises(ValueError, match="'av'"):
        fusion(features, torch.ones(1, 4, dtype=torch.bool))


def test_wrong_feature_dim_is_an_error(fusion) -> None:
    features = random_features(fusion, 1, seed=0)
    features["visual"] = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="visual"):
        fusion(features, torch.ones(1, 4, dtype=torch.bool))


def test_temperature_scales_logit_and_is_saved(fusion) -> None:
    features = random_features(fusion, 2, seed=2)
    present = torch.ones(2, 4, dtype=torch.bool)
    with torch.no_grad():
        before = fusion(features, present)
        fusion.set_temperature(2.0)
        after = fusion(features, present)
    torch.testing.assert_close(after.logit, before.logit / 2.0)
    torch.testing.assert_close(after.gate_weights, before.gate_weights)
    assert "temperature" in fusion.state_dict()
    assert not any(n == "temperature" for n, _ in fusion.named_parameters())
    with pytest.raises(ValueError):
        fusion.set_temperature(0.0)


def test_triage_features_values() -> None:
    frames = np.array([1.0, -1.0, 3.0], np.float32)
    f = triage_features(torch.tensor(0.5), torch.from_numpy(frames))
    assert f.dtype == np.float32 and f.shape == (4,)
    np.testing.assert_allclose(f, [0.5, 1.0, 3.0, frames.std()], rtol=1e-6)
    np.testing.assert_allclose(triage_features(2.0, []), [2.0, 2.0, 2.0, 0.0])


def test_visual_av_audio_feature_values() -> None:
    v = visual_features([1.0, 3.0], np.array([[0.0, 2.0], [2.0, 4.0]]), torch.tensor([0.1, 0.3]))
    np.testing.assert_allclose(v, [2.0, 3.0, 1.0, 0.2, 1.0, 3.0], rtol=1e-6)  # mean, max, second, error, emb
    one = visual_features([-1.5], np.array([[5.0, 6.0]]), [0.4])
    np.testing.assert_allclose(one, [-1.5, -1.5, -1.5, 0.4, 5.0, 6.0], rtol=1e-6)  # one crop: second = max
    a = av_features(torch.tensor([1.5]), 250.0, -2.0, torch.tensor([[7.0, 8.0]]))
    np.testing.assert_allclose(a, [1.5, 0.25, -2.0, 7.0, 8.0])
    s = audio_features(np.float32(-1.0), [4.0, 5.0])
    np.testing.assert_allclose(s, [-1.0, 4.0, 5.0])
    assert {v.dtype, a.dtype, s.dtype} == {np.dtype(np.float32)}
    with pytest.raises(ValueError):
        visual_features([], np.zeros((0, 2)), [])


def test_fusion_config_for_defaults() -> None:
    assert fusion_config_for() == FusionConfig()
    assert fusion_config_for(COMPRESSION_TEST_CONFIG, AV_TEST_CONFIG).modalities == FUSION_TEST_CONFIG.modalities


@pytest.mark.parametrize(
    "triage_name, compression_name, av_name, fusion_name",
    [
        ("fast_triage", "compression_resilient", "av_alignment", "fusion"),
        ("fast_triage_test", "compression_resilient_test", "av_alignment_test", "fusion_test"),
    ],
)
def test_branch_outputs_through_builders_fit_fusion(
    triage_name: str, compression_name: str, av_name: str, fusion_name: str
) -> None:
    """The deployments' path: branch outputs -> feature builders -> fusion_inputs -> FusionModel."""
    torch.manual_seed(0)
    triage, comp, av, fusion = (MODELS.get(n)().eval() for n in (triage_name, compression_name, av_name, fusion_name))
    with torch.no_grad():
        t = triage(torch.rand(1, 5, 3, 128, 128))
        c = comp(torch.rand(4, 3, 128, 128))
        times = torch.arange(5, dtype=torch.float32).view(1, 5) / 10
        a = av(torch.randn(1, 16000) * 0.1, torch.randn(1, 5, 20, 2), torch.rand(1, 5, 48, 96), times)
        s = av.spoof(torch.randn(1, 16000) * 0.1)
    video = {
        "triage": triage_features(t.clip_logit[0], t.frame_logits[0]),
        "visual": visual_features(c.logit, c.embedding, c.recon_error),
        "av": av_features(a.sync_logit[0], a.offset_ms[0], a.spoof_logit[0], a.embedding[0]),
        "audio": audio_features(s.spoof_logit[0], s.embedding[0]),
    }
    dims = dict(fusion.config.modalities)
    assert {k: fusion_view(k, v, fusion.config).shape for k, v in video.items()} == {k: (d,) for k, d in dims.items()}
    image = {"visual": video["visual"]}
    audio_only = {"audio": video["audio"], "triage": None}
    features, present = fusion_inputs([video, image, audio_only], fusion.config)
    assert present.tolist() == [[True] * 4, [False, True, False, False], [False, False, False, True]]
    with torch.no_grad():
        out = fusion(features, present)
    assert out.logit.shape == (3,) and torch.isfinite(out.logit).all()


@pytest.mark.parametrize("peak, read", [("max", 3.0), ("second", -4.0)])
def test_a_fusion_reads_the_visual_peak_it_was_trained_on(peak: str, read: float) -> None:
    """One crop far above the rest (what real talking-head videos show) is the peak of a "max" fusion
    (v0-v4) only; a "second" fusion reads the second-largest crop logit, so one frame alone is not evidence."""
    from dataclasses import replace

    from models import build_fusion

    config = replace(FusionConfig(), visual_peak=peak)
    dim = dict(config.modalities)["visual"]
    crops = [-5.0, 3.0, -6.0, -4.0]
    features = visual_features(crops, np.tile(np.arange(dim - 3, dtype=np.float32), (4, 1)), [0.1] * 4)
    view = fusion_view("visual", features, config)
    np.testing.assert_allclose(view[:3], [np.mean(crops), read, 0.1], rtol=1e-6)
    np.testing.assert_array_equal(view[3:], np.arange(dim - 3))
    batch, _ = fusion_inputs([{"visual": features}], config)
    np.testing.assert_allclose(batch["visual"][0].numpy(), view)
    av = np.arange(dict(config.modalities)["av"], dtype=np.float32)
    np.testing.assert_array_equal(fusion_view("av", av, config), av)  # other modalities as they are
    with pytest.raises(ValueError, match="visual_peak"):
        build_fusion(replace(FUSION_TEST_CONFIG, visual_peak="median"))


def test_a_bundle_written_before_visual_peak_reads_the_largest_crop() -> None:
    """Fusion bundles v0-v4 have no `visual_peak` in config.json: they load as "max", what they learned from."""
    import json
    from dataclasses import asdict

    from models.registry import config_from_dict

    stored = json.loads(json.dumps(asdict(FUSION_TEST_CONFIG)))
    del stored["visual_peak"]
    assert config_from_dict(FusionConfig, stored) == FUSION_TEST_CONFIG
    assert config_from_dict(FusionConfig, stored).visual_peak == "max"


def test_fusion_inputs_rejects_bad_samples() -> None:
    config = FusionConfig()
    with pytest.raises(ValueError, match="unknown"):
        fusion_inputs([{"video": np.zeros(4)}], config)
    with pytest.raises(ValueError, match="triage"):
        fusion_inputs([{"triage": np.zeros(5)}], config)


def test_an_independent_modality_is_combined_as_noisy_or_not_read_by_the_model() -> None:
    """v2: the audio spoof head learned from real speech; fusion (trained on synthetic talking faces)
    does not read it, and its calibrated P(fake) joins the fused one as independent evidence."""
    from dataclasses import replace

    from models import build_fusion
    from models.fusion import combine_independent
    from pipeline.fuse import run_fusion
    from pipeline.results import BranchResult

    dims = tuple(d for d in FUSION_TEST_CONFIG.modalities if d[0] != "audio")
    direct = tuple(d for d in FUSION_TEST_CONFIG.direct if d[0] != "audio")
    torch.manual_seed(0)
    model = build_fusion(replace(FUSION_TEST_CONFIG, modalities=dims, direct=direct, independent=("audio",))).eval()
    rng = np.random.default_rng(0)
    visual_dim = dict(dims)["visual"] + 1  # the branch gives max and second; the fusion reads one of them
    visual = BranchResult("visual", "ok", score=0.3, features=rng.normal(size=visual_dim).astype(np.float32))
    audio_dim = dict(FUSION_TEST_CONFIG.modalities)["audio"]
    audio = BranchResult("audio", "ok", score=0.8, features=rng.normal(size=audio_dim).astype(np.float32))
    other_audio = BranchResult("audio", "ok", score=0.1, features=rng.normal(size=audio_dim).astype(np.float32))
    alone, both, both_other, video_only = run_fusion(model, [[audio], [visual, audio], [visual, other_audio], [visual]])
    assert alone.probability == pytest.approx(0.8)  # an audio file: its calibrated spoof probability
    assert alone.status != "failed" and video_only.status != "failed"
    p = video_only.probability
    assert both.probability == pytest.approx(combine_independent(p, [0.8]))
    assert both_other.probability == pytest.approx(1 - (1 - p) * 0.9)
    assert set(both.gate_weights) == {name for name, _ in dims}
    assert combine_independent(None, []) == 0.0


def test_fusion_target_leaves_an_independent_modality_to_its_own_branch() -> None:
    from training.manifest import ManifestEntry, ModalityLabels
    from training.train import fusion_target

    def entry(label: int, **labels: int) -> ManifestEntry:
        return ManifestEntry(path="x", label=label, kind="video", split="fusion", modality_labels=ModalityLabels(**labels))

    assert fusion_target(entry(1, visual=0, audio=1, av=0), ("audio",)) == 0  # voice swapped, face authentic
    assert fusion_target(entry(1, visual=0, audio=1, av=0)) == 1
    assert fusion_target(entry(1, visual=1, audio=0), ("audio",)) == 1
    assert fusion_target(entry(1, av=1, audio=1), ("audio",)) == 1
    assert fusion_target(entry(0, visual=0, audio=0), ("audio",)) == 0


def test_a_fake_whose_manipulated_modalities_are_all_hidden_teaches_fusion_nothing() -> None:
    """Modality dropout must not teach "missing evidence is evidence": a voice-only fake whose audio token
    is hidden looks authentic to what is left, so it adds no loss; authentic files and fakes without
    per-modality labels always count."""
    from dataclasses import replace

    from training.manifest import ManifestEntry, ModalityLabels
    from training.train import evidence_matrix

    def entry(label: int, **labels: int) -> ManifestEntry:
        return ManifestEntry(path="x", label=label, kind="video", split="fusion", modality_labels=ModalityLabels(**labels))

    entries = [
        entry(1, visual=0, audio=1, av=0),  # voice only
        entry(1, visual=1, audio=0, av=0),  # face only
        entry(1, visual=0, audio=0, av=1),  # lips out of sync
        entry(1, visual=1, audio=1, av=0),  # face and voice
        entry(0, visual=0, audio=0, av=0),
        entry(1),  # a fake from elsewhere: where its evidence lies is unknown
    ]
    config = FusionConfig()  # triage, visual, av, audio; the av token reads the spoof logit too
    assert evidence_matrix(entries, config).tolist() == [
        [False, False, True, True],
        [True, True, False, False],
        [False, False, True, False],
        [True, True, True, True],
        [True, True, True, True],
        [True, True, True, True],
    ]
    scalars = replace(FusionConfig(), read_embeddings=False, direct=(("triage", 4), ("visual", 3), ("av", 2), ("audio", 1)))
    assert evidence_matrix(entries[:1], scalars).tolist() == [[False, False, False, True]]  # av without the spoof logit
    shows = evidence_matrix(entries, scalars)
    no_audio = torch.tensor([[True, True, True, False]] * len(entries))
    assert ((no_audio & shows).any(dim=1)).tolist() == [False, True, True, True, True, True]


def test_a_linear_fusion_is_a_logistic_regression_over_the_leading_scalars() -> None:
    """`linear_only`: logit x temperature = bias + each present modality's weights . its leading scalars + its
    presence bias; nothing else is built or read (the embeddings after the scalars change nothing)."""
    torch.manual_seed(3)
    model = build_fusion(LINEAR_CONFIG).eval()
    assert not any(k.startswith(("proj", "gate", "attention", "head", "query")) for k in model.state_dict())
    with torch.no_grad():
        model.presence_bias.copy_(torch.tensor([0.3, -0.2, 0.5, 0.1]))
        model.direct_bias.fill_(-0.4)
        model.set_temperature(2.0)
    features = random_features(model, 3, seed=4)
    present = torch.tensor([[True, True, True, True], [False, True, True, False], [False, False, False, True]])
    with torch.no_grad():
        out = model(features, present)
        noisy = model({k: torch.cat([v[:, :4], torch.randn(3, v.shape[1] - 4) * 50], 1) for k, v in features.items()},
                      present)
    expected = torch.full((3,), -0.4)
    for i, (name, k) in enumerate(LINEAR_CONFIG.direct):
        term = features[name][:, :k] @ model.direct[name].weight[0] + model.presence_bias[i]
        expected = expected + torch.where(present[:, i], term, 0.0)
    torch.testing.assert_close(out.logit, expected / 2.0)
    torch.testing.assert_close(noisy.logit, out.logit)
    # gate weights: each present modality's share of |its term|
    assert out.gate_weights[2, 3] == 1.0 and torch.all(out.gate_weights[1, [0, 3]] == 0.0)


def test_a_linear_fusion_needs_scalars_for_every_modality() -> None:
    with pytest.raises(ValueError, match="linear_only"):
        build_fusion(FusionConfig(read_embeddings=True, linear_only=True, direct=(("visual", 3),)))
