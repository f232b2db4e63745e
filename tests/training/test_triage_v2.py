"""FastTriage v2: sequence SBI / augmentation, the optional MobileNetV2 frame encoder, v1 compatibility (no packages)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from models import MODELS, FastTriageConfig, save_bundle
from models.bundle import load_bundle
from models.triage import TEST_CONFIG, build_fast_triage
from tests.training.test_visual_v2 import face_like
from training.triage_v2 import (
    SeqSource,
    TriageV2Params,
    collate,
    init_frame_backbone,
    quality_sequence,
    sample_sequence,
    sbi_sequence,
    still_sequence,
    train_triage,
)


def test_sbi_sequence_uses_one_blend_for_every_frame() -> None:
    frames = np.stack([face_like(64)] * 6)  # a still clip: any frame-to-frame change comes from the mask jitter
    fake = sbi_sequence(frames, np.random.default_rng(0))
    assert fake.shape == frames.shape and fake.dtype == np.uint8
    change = np.abs(fake.astype(int) - frames.astype(int)).mean(axis=(1, 2, 3))  # per frame
    assert (change > 0.5).all()
    assert change.std() < 0.25 * change.mean()  # same strength and colour shift on every frame
    between = np.abs(np.diff(fake.astype(int), axis=0)).mean()
    assert 0 < between < 0.5 * change.mean()  # small per-frame jitter, not a new blend each frame


def test_quality_sequence_degrades_every_frame_alike() -> None:
    frames = np.stack([face_like(64)] * 4)
    out = quality_sequence(frames, np.random.default_rng(3))
    assert out.shape == frames.shape and out.dtype == np.uint8
    assert all(np.array_equal(out[0], f) for f in out[1:])


def test_still_sequence_and_sampling_labels() -> None:
    crop = face_like(64)
    still = still_sequence(crop, 5, np.random.default_rng(0))
    assert still.shape == (5, *crop.shape) and np.array_equal(still[0], crop)
    rng = np.random.default_rng(1)
    real = SeqSource("r.jpg", crop[None], 0, "real", still=True)
    fake = SeqSource("f.mp4", np.stack([crop] * 10), 1, "bench")
    labels = [sample_sequence(real, 4, rng, {"real": 0.5, "bench": 0.0})[1] for _ in range(40)]
    assert 0 < sum(labels) < 40  # authentic -> SBI fake sometimes
    seq, y = sample_sequence(fake, 4, rng, {"real": 1.0, "bench": 1.0})
    assert y == 1 and seq.shape == (4, 64, 64, 3)
    frames, ys = collate([(np.zeros((5, 8, 8, 3), np.uint8), 0), (np.zeros((3, 8, 8, 3), np.uint8), 1)])
    assert frames.shape == (2, 3, 8, 8, 3) and ys.tolist() == [0.0, 1.0]


def test_v1_config_builds_the_v1_network() -> None:
    model = build_fast_triage(FastTriageConfig())
    assert model.frame_encoder is None and not any(k.startswith("frame_encoder") for k in model.state_dict())
    assert sum(p.numel() for p in model.parameters()) == 94114  # weights/fast_triage/v1's count


def test_mobilenet_encoder_roundtrips_a_bundle(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MODELS.get("fast_triage_mobilenet_test")().eval()
    out = model(torch.rand(2, 3, 3, 48, 48))
    assert out.clip_logit.shape == (2,) and out.frame_logits.shape == (2, 3)
    save_bundle(model, tmp_path / "b", arch="fast_triage", config=model.config, trained=False, card_text="t")
    loaded = load_bundle(tmp_path / "b").model.eval()
    x = torch.rand(1, 4, 3, 48, 48)
    with torch.inference_mode():
        assert torch.allclose(model(x).clip_logit, loaded(x).clip_logit, atol=1e-6)


def test_init_frame_backbone_checks(tmp_path: Path) -> None:
    from torchvision.models import mobilenet_v2

    with pytest.raises(TypeError):
        init_frame_backbone(build_fast_triage(TEST_CONFIG), tmp_path / "x.pth")
    model = MODELS.get("fast_triage_mobilenet_test")()
    ref = mobilenet_v2(weights=None, width_mult=0.25)
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    sha = init_frame_backbone(model, tmp_path / "w.pth")
    assert len(sha) == 64
    assert torch.equal(model.frame_encoder.features[0][0].weight, ref.features[0][0].weight)
    torch.save({"bad": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError):
        init_frame_backbone(model, tmp_path / "bad.pth")


def test_train_triage_runs_and_lowers_nothing_to_nan() -> None:
    torch.manual_seed(0)
    model = build_fast_triage(TEST_CONFIG)
    crop = face_like(32)
    pool = [SeqSource("a.mp4", np.stack([crop] * 6), 0, "bench"), SeqSource("b.jpg", crop[None], 0, "real", True),
            SeqSource("c.mp4", np.stack([face_like(32, 1)] * 6), 1, "bench")]
    losses = train_triage(model, pool, TriageV2Params(epochs=2, clip_frames=4, batch_size=3), seed=0)
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert not model.training
    assert asdict(TriageV2Params())["clip_frames"] == 32
