"""What the shipped trained weights (v1) must do on media they never saw.

The clips come from `tests.mediagen`, a different generator from the training benchmark
(`training.benchmark`): the astronaut's face with a mouth driven by speech-like audio. These
are behaviours, not golden numbers: in-sync lips score as in sync, lips 400 ms late do not and
their offset is estimated on the right side.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from media import decode_media
from models import load_bundle
from tests.mediagen import talking_face_video
from pipeline.av import run_av
from pipeline.config import AVConfig
from training.features import ClipArrays

WEIGHTS = Path(__file__).resolve().parents[2] / "weights"


@pytest.fixture(scope="module")
def av_model():
    return load_bundle(WEIGHTS / "av_alignment" / "v1").model.eval()


def _av(model, lip_delay_s: float, seed: int) -> dict[str, float]:
    clip = decode_media(talking_face_video(seconds=4.0, size=(320, 240), fps=25, seed=seed, lip_delay_s=lip_delay_s))
    arrays = ClipArrays.from_clip(clip)
    assert arrays.face_coverage > 0.9
    with torch.inference_mode():
        result = run_av(model, arrays, AVConfig())
    assert result.av.status == "ok", result.av.reason
    return result.av.details


@pytest.mark.parametrize("seed", [11, 12])
def test_trained_av_tells_in_sync_from_lips_400ms_late(av_model, seed: int) -> None:
    synced, late = _av(av_model, 0.0, seed), _av(av_model, 0.4, seed)
    p_synced, p_late = synced["sync_probability"], late["sync_probability"]
    assert p_synced > p_late + 0.2, (p_synced, p_late)
    # lips late = the audio is heard early: a positive offset, far from the in-sync estimate
    assert late["offset_ms"] > 150 and abs(synced["offset_ms"]) < 100, (synced["offset_ms"], late["offset_ms"])
