"""Issue 17, items 2-3, with the weights and settings `serve.cpu.yaml` serves: a voice the audio model
cannot judge makes the audio branch abstain, and its absence is no evidence either way. A clip on which
every branch that ran says authentic (face, lip sync) is answered `real`, not `uncertain`: Fusion v5 is
trained so that a fake whose evidence was hidden from it teaches nothing (`training.train.evidence_matrix`);
the first v5 candidate, trained without that, answered the README's quick-start clip 0.47 `uncertain`."""

from __future__ import annotations

import pytest

from tests.mediagen import talking_face_video
from training.analyst import DEFAULT_PROFILE, Analyzer


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    return Analyzer(None, None, DEFAULT_PROFILE, None)


@pytest.mark.parametrize("seed", [1, 4])
def test_an_authentic_clip_whose_voice_is_not_judged_is_answered_real(analyzer, tmp_path, seed: int) -> None:
    clip = tmp_path / f"talking{seed}.mp4"
    clip.write_bytes(talking_face_video(seconds=3.0, size=(320, 240), with_audio=True, seed=seed))
    answer = analyzer(clip)[0]
    modalities = answer["modalities"]
    # the path under test: the voice is out of the audio model's distribution, face and sync are judged
    assert modalities["audio"]["status"] == "skipped" and modalities["audio"]["code"] == "out_of_distribution"
    assert modalities["visual"]["status"] == "ok" and modalities["av"]["status"] == "ok"
    assert modalities["visual"]["score"] < 0.5 and modalities["av"]["score"] < 0.5
    assert answer["gate_weights"]["audio"] == 0.0
    assert answer["verdict"] == "real", (answer["fake_probability"], answer["reasons"])
    assert not any(r["decisive"] for r in answer["reasons"]), answer["reasons"]
