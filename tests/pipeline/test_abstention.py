"""No evidence, no verdict: face models abstain without a face, and the verdict says why it is `uncertain`.

Runs the real stage functions on the shipped v1 weights (`LocalPipeline`) for faceless uploads, and
`pipeline.verdict.respond` on hand-built analyses for failed branches and near-threshold answers.
"""

from __future__ import annotations

import numpy as np
import pytest
from skimage.data import chelsea, coffee

from media.clip import ClipMeta, Keyframe
from pipeline.analyze import Analysis
from pipeline.config import PipelineConfig, VerdictConfig, VisualConfig
from pipeline.local import LocalPipeline
from pipeline.results import AVResult, BranchResult, FusionResult, KeyframeResult, TriageResult
from pipeline.verdict import respond
from pipeline.visual import crop_indices

from tests.mediagen import encode_image, encode_video, speech_like_audio


@pytest.fixture(scope="module")
def local() -> LocalPipeline:
    return LocalPipeline.load(PipelineConfig(), "v1", device="cpu")


@pytest.mark.parametrize("photo", [coffee, chelsea], ids=["coffee", "cat"])
def test_a_faceless_photo_gets_no_verdict(local: LocalPipeline, photo) -> None:
    answer = local.respond(local.run(encode_image(photo(), "jpeg")))
    assert answer.verdict == "uncertain" and answer.is_fake is False
    assert answer.fake_probability == 0.5 and answer.confidence == 0.5
    codes = {r.code: r for r in answer.reasons}
    assert set(codes) == {"no_face", "no_usable_modality"} and codes["no_usable_modality"].decisive
    assert answer.modalities["visual"].status == "skipped" and answer.modalities["visual"].code == "no_face"
    assert answer.gate_weights == {m: 0.0 for m in answer.modalities}


def test_a_faceless_video_with_speech_is_judged_on_the_audio_alone(local: LocalPipeline) -> None:
    rng = np.random.default_rng(0)
    frames = [np.full((120, 160, 3), 40 + 4 * i, np.uint8) + rng.integers(0, 8, (120, 160, 3), dtype=np.uint8)
              for i in range(20)]
    upload = encode_video(frames, "mp4", "libx264", 10, audio=speech_like_audio(2.0, seed=2))
    answer = local.respond(local.run(upload))
    assert answer.media.face_coverage == 0.0
    for modality in ("triage", "visual", "av"):
        report = answer.modalities[modality]
        assert (report.status, report.code) == ("skipped", "no_face"), modality
    assert answer.modalities["audio"].status == "ok"
    assert answer.early_exit is False  # triage abstained, so it cannot settle the clip
    no_face = next(r for r in answer.reasons if r.code == "no_face")
    assert set(no_face.modalities) == {"triage", "visual", "av"} and not no_face.decisive
    assert answer.gate_weights["audio"] == pytest.approx(1.0, abs=1e-3)


def _clip(face_found: list[bool]) -> object:
    class Arrays:
        pass

    arrays = Arrays()
    arrays.face_found = np.asarray(face_found)
    arrays.n_frames = len(face_found)
    return arrays


def test_visual_crops_are_frames_with_a_face() -> None:
    clip = _clip([False, True, True, False, True, False])
    keyframes = KeyframeResult([Keyframe(0, 0.0, 0.1), Keyframe(2, 0.2, 0.3), Keyframe(3, 0.3, 0.9)])
    assert crop_indices(clip, keyframes, VisualConfig()).tolist() == [2]  # keyframes 0 and 3 show no face
    faceless_keys = KeyframeResult([Keyframe(0, 0.0, 0.1), Keyframe(5, 0.5, 0.2)])
    assert crop_indices(clip, faceless_keys, VisualConfig(max_crops=2)).tolist() == [1, 4]
    assert crop_indices(_clip([False] * 4), None, VisualConfig()).size == 0


META = ClipMeta(kind="video", duration_s=2.0, native_fps=25.0, width=320, height=240, rotation=0,
                has_audio=True, has_video=True, face_coverage=1.0, container="mp4")


def _analysis(p: float, failures: dict[str, str] | None = None, fusion_status: str = "ok") -> Analysis:
    triage = TriageResult(BranchResult("triage", "ok", score=0.9), np.zeros(4, np.float32))
    visual = BranchResult("visual", "ok", score=0.95)
    av = None if failures else AVResult(BranchResult("av", "ok", score=0.9), BranchResult("audio", "ok", score=0.9))
    fused = FusionResult(p, status=fusion_status, reason=None if fusion_status == "ok" else "feature size mismatch")
    return Analysis(META, 4, triage=triage, visual=visual, av=av, fused=fused, failures=failures or {})


def test_a_failed_branch_never_leaves_a_confident_verdict() -> None:
    answer = respond(_analysis(0.99, {"av": "RuntimeError: flow broke"}), VerdictConfig(), "r", None)
    assert answer.verdict == "uncertain" and answer.fake_probability == 0.99
    failed = next(r for r in answer.reasons if r.code == "branch_failed")
    assert failed.decisive and failed.modalities == ["av", "audio"]
    assert answer.modalities["av"].code == "branch_failed"


def test_confident_evidence_keeps_its_verdict_and_the_margin_abstains() -> None:
    sure = respond(_analysis(0.99), VerdictConfig(), "r", None)
    assert (sure.verdict, sure.reasons) == ("fake", [])
    near = respond(_analysis(0.55), VerdictConfig(uncertain_margin=0.1), "r", None)
    assert near.verdict == "uncertain" and [r.code for r in near.reasons] == ["near_threshold"]
    degraded = respond(_analysis(0.9, fusion_status="failed"), VerdictConfig(), "r", None)
    assert degraded.verdict == "uncertain" and [r.code for r in degraded.reasons] == ["fusion_degraded"]


def _doubts(visual: float, av: float, p: float = 0.99) -> Analysis:
    """Fusion sure of fake; the branches it read (visual, av; the audio branch abstained) as given."""
    triage = TriageResult(BranchResult("triage", "ok", score=0.95), np.zeros(4, np.float32))
    audio = BranchResult("audio", "skipped", score=0.9, code="out_of_distribution")
    fused = FusionResult(p, gate_weights={"visual": 0.5, "av": 0.5, "audio": 0.0})
    return Analysis(META, 4, triage=triage, visual=BranchResult("visual", "ok", score=visual),
                    av=AVResult(BranchResult("av", "ok", score=av), audio), fused=fused)


def test_a_fake_verdict_needs_a_branch_that_says_fake() -> None:
    """Two doubts are not a certainty: fusion at 0.99 from visual 0.18 and AV 0.42 abstains (`weak_evidence`);
    triage (not read by fusion) and the abstaining voice model's guess do not count as support."""
    weak = respond(_doubts(0.18, 0.42), VerdictConfig(), "r", None)
    assert weak.verdict == "uncertain" and weak.fake_probability == 0.99 and not weak.is_fake
    assert weak.confidence == pytest.approx(0.99)  # P(fake) is above the threshold: the same meaning as for `fake`
    reason = next(r for r in weak.reasons if r.code == "weak_evidence")
    assert reason.decisive and reason.modalities == ["visual", "av"] and "visual 0.18, av 0.42" in reason.message
    assert respond(_doubts(0.18, 0.62), VerdictConfig(), "r", None).verdict == "fake"
    assert respond(_doubts(0.55, 0.1), VerdictConfig(), "r", None).verdict == "fake"
    assert respond(_doubts(0.18, 0.42), VerdictConfig(fake_needs_a_branch=False), "r", None).verdict == "fake"
    real = respond(_doubts(0.18, 0.42, p=0.05), VerdictConfig(), "r", None)
    assert real.verdict == "real" and not any(r.decisive for r in real.reasons)


def test_the_evaluation_applies_the_rule_as_the_service_does() -> None:
    """`spectrashield eval` rebuilds the verdict from the fused probability: told which modalities fusion
    reads, it abstains where the service does."""
    from training.features import BranchRun, served_answer

    run = BranchRun(_doubts(0.18, 0.42))
    assert served_answer(run, 0.99, VerdictConfig(), ("visual", "av", "audio"))[0] == "uncertain"
    assert served_answer(BranchRun(_doubts(0.7, 0.42)), 0.99, VerdictConfig(), ("visual", "av", "audio"))[0] == "fake"
    served = respond(_doubts(0.18, 0.42), VerdictConfig(), "r", None)
    assert served.verdict == served_answer(run, 0.99, VerdictConfig(), ("visual", "av", "audio"))[0]
    # and it names the same decisive reasons the service gives
    verdict, codes = served_answer(run, 0.99, VerdictConfig(), ("visual", "av", "audio"))
    assert (verdict, codes) == ("uncertain", [r.code for r in served.reasons if r.decisive]) and codes == ["weak_evidence"]
    assert served_answer(BranchRun(_doubts(0.7, 0.42)), 0.99, VerdictConfig(), ("visual", "av", "audio")) == ("fake", [])


def test_visual_branch_measures_its_embedding_against_the_authentic_statistics(local: LocalPipeline) -> None:
    from models.ood import OODStats
    from pipeline.visual import run_visual
    from tests.mediagen import talking_face_video

    from pipeline.decode import decode

    decoded = decode(talking_face_video(seconds=1.0, size=(320, 240), fps=10, seed=5), local.config.decode)
    bundle = local.bundles["compression_resilient"]
    plain = run_visual(bundle.model, [decoded], [None], VisualConfig(), "cpu")[0]
    assert plain.status == "ok" and plain.out_of_distribution is None and "ood_distance" not in plain.details
    from models import VISUAL_SCALARS

    dim = plain.features.size - VISUAL_SCALARS
    for threshold, expected in ((0.0, True), (1e9, False)):
        stats = OODStats(np.zeros(dim), np.eye(dim), threshold)
        branch = run_visual(bundle.model, [decoded], [None], VisualConfig(), "cpu", None, stats)[0]
        assert branch.out_of_distribution is expected
        assert branch.details["ood_threshold"] == threshold and branch.details["ood_distance"] > 0


def test_a_face_with_no_detail_is_scored_but_not_judged(local: LocalPipeline) -> None:
    """The visual branch abstains (`low_quality`) on a face enlarged from a thumbnail: its score is reported,
    fusion does not read it, the AV branch still judges the clip."""
    import cv2

    from pipeline.decode import decode
    from pipeline.visual import run_visual
    from tests.mediagen import talking_face_video

    decoded = decode(talking_face_video(seconds=2.0, size=(320, 240), fps=10, seed=5), local.config.decode)
    model = local.bundles["compression_resilient"].model
    sharp = run_visual(model, [decoded], [None], VisualConfig(), "cpu")[0]
    assert sharp.status == "ok" and sharp.code is None and sharp.details["face_detail"] > VisualConfig().min_face_detail
    sharp_crops = decoded.face_crops.copy()
    decoded.face_crops = np.stack(
        [cv2.resize(cv2.resize(c, (20, 20), interpolation=cv2.INTER_AREA), c.shape[:2][::-1]) for c in sharp_crops]
    )
    blurred = run_visual(model, [decoded], [None], VisualConfig(), "cpu")[0]
    assert (blurred.status, blurred.code) == ("skipped", "low_quality") and "too little detail" in blurred.reason
    assert blurred.score is not None and blurred.details["face_detail"] < VisualConfig().min_face_detail
    assert blurred.details["surround_detail"] < VisualConfig().min_surround_detail
    assert run_visual(model, [decoded], [None], VisualConfig(min_face_detail=0.0), "cpu")[0].status == "ok"
    pasted = decoded.face_crops.copy()  # a blurred face inside a sharp head is judged: the contrast is evidence
    pasted[:, :32] = sharp_crops[:, :32]
    blurred_crops, decoded.face_crops = decoded.face_crops, pasted
    judged = run_visual(model, [decoded], [None], VisualConfig(), "cpu")[0]
    assert judged.status == "ok" and judged.details["face_detail"] < VisualConfig().min_face_detail
    decoded.face_crops = blurred_crops

    answer = local.respond(local.run_clip(decoded))
    assert answer.modalities["visual"].code == "low_quality" and answer.gate_weights["visual"] == 0.0
    assert answer.modalities["av"].status == "ok" and answer.gate_weights["av"] > 0
    assert "low_quality" in {r.code for r in answer.reasons}


def _blurred_face(p: float, audio: BranchResult | None = None) -> Analysis:
    """Fusion at `p` from the AV branch alone: the visual branch abstained on a face with no detail."""
    triage = TriageResult(BranchResult("triage", "ok", score=0.9), np.zeros(4, np.float32))
    visual = BranchResult("visual", "skipped", score=0.97, code="low_quality", reason="too little detail")
    audio = audio or BranchResult("audio", "skipped", score=0.9, code="out_of_distribution")
    fused = FusionResult(p, gate_weights={"visual": 0.0, "av": 1.0, "audio": 0.0})
    return Analysis(META, 4, triage=triage, visual=visual, av=AVResult(BranchResult("av", "ok", score=p), audio),
                    fused=fused)


def test_lips_read_off_a_face_with_no_detail_do_not_make_a_fake_verdict() -> None:
    """Misread lips look out of step with the voice, never in step: on such a face an AV reading in sync is
    evidence (`real`), one out of sync is not (`uncertain`), unless the voice model says fake on its own."""
    accused = respond(_blurred_face(0.99), VerdictConfig(), "r", None)
    assert accused.verdict == "uncertain" and accused.fake_probability == 0.99
    reason = next(r for r in accused.reasons if r.code == "low_quality")
    assert reason.decisive and reason.modalities == ["visual"] and "misreading" in reason.message
    cleared = respond(_blurred_face(0.1), VerdictConfig(), "r", None)
    assert cleared.verdict == "real"
    assert not next(r for r in cleared.reasons if r.code == "low_quality").decisive
    spoofed = respond(_blurred_face(0.99, BranchResult("audio", "ok", score=0.97)), VerdictConfig(), "r", None)
    assert spoofed.verdict == "fake"
    from training.features import BranchRun, served_answer

    assert served_answer(BranchRun(_blurred_face(0.99)), 0.99, VerdictConfig(), ("visual", "av", "audio"))[0] == "uncertain"


def _music(seconds: float, sr: int = 16_000) -> np.ndarray:
    """Steady chords and a little hiss: sound, but nobody speaking."""
    t = np.arange(int(seconds * sr)) / sr
    chord = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6, 440.0)) / 4
    return (0.3 * chord + 0.003 * np.random.default_rng(0).standard_normal(t.size)).astype(np.float32)


def test_voice_activity_finds_speech_and_not_music() -> None:
    from models.vad import speech_seconds

    assert speech_seconds(speech_like_audio(3.0, seed=1)) > 1.0
    assert speech_seconds(_music(3.0)) < 0.3
    assert speech_seconds(np.zeros(16_000, np.float32)) == 0.0
    with pytest.raises(ValueError):
        speech_seconds(np.zeros(8000, np.float32), sample_rate=8000)


def test_voice_activity_is_safe_from_several_threads_and_on_non_finite_audio() -> None:
    """AVAlignment runs requests in worker threads; the VAD's TorchScript state must not be shared mid-call."""
    from concurrent.futures import ThreadPoolExecutor

    from models.vad import speech_seconds

    clips = [speech_like_audio(2.0, seed=s) for s in range(4)] + [_music(2.0)] * 2
    serial = [speech_seconds(c) for c in clips]
    with ThreadPoolExecutor(6) as pool:
        for _ in range(3):
            assert list(pool.map(speech_seconds, clips)) == serial
    broken = speech_like_audio(2.0, seed=9)
    broken[::7] = np.nan
    broken[1::11] = np.inf
    assert np.isfinite(speech_seconds(broken))


def test_no_speech_means_no_voice_verdict(local: LocalPipeline) -> None:
    """Music under a face: the spoof head and lip sync abstain (no_speech) instead of scoring it."""
    from tests.mediagen import encode_audio, talking_face_mouth
    from tests.mediagen import iter_talking_face_frames

    audio = _music(2.0)
    frames = iter_talking_face_frames(talking_face_mouth(speech_like_audio(2.0), 16_000, 25.0, 50), (320, 240), 0)
    answer = local.respond(local.run(encode_video(frames, "mp4", "libx264", 25.0, audio)))
    for modality in ("av", "audio"):
        assert (answer.modalities[modality].status, answer.modalities[modality].code) == ("skipped", "no_speech")
    reason = next(r for r in answer.reasons if r.code == "no_speech")
    assert set(reason.modalities) == {"av", "audio"} and not reason.decisive
    assert answer.modalities["visual"].status == "ok"  # the face is still judged
    only_music = local.respond(local.run(encode_audio(_music(2.0))))
    assert only_music.verdict == "uncertain" and only_music.fake_probability == 0.5
    assert {r.code for r in only_music.reasons} >= {"no_speech", "no_usable_modality"}
    spoken = local.respond(local.run(encode_audio(speech_like_audio(2.0, seed=3))))
    assert spoken.modalities["audio"].status == "ok"


def test_an_audio_upload_in_a_voice_no_model_knows_gets_no_verdict(local: LocalPipeline) -> None:
    import dataclasses

    from models.ood import OODStats
    from tests.mediagen import encode_audio

    upload = encode_audio(speech_like_audio(3.0, seed=4))
    analysis = local.run(upload)
    heard = local.respond(analysis)
    assert heard.modalities["audio"].status == "ok" and "out_of_distribution" not in {r.code for r in heard.reasons}
    dim = analysis.av.audio.features.size - 1  # [spoof logit, embedding]
    bundle = local.bundles["av_alignment"]
    local.bundles["av_alignment"] = dataclasses.replace(bundle, ood=OODStats(np.zeros(dim), np.eye(dim), 0.0))
    try:
        answer = local.respond(local.run(upload))
    finally:
        local.bundles["av_alignment"] = bundle
    assert answer.verdict == "uncertain" and answer.fake_probability == 0.5
    assert answer.modalities["audio"].code == "out_of_distribution"
    assert answer.modalities["audio"].score == pytest.approx(heard.modalities["audio"].score)
    codes = {r.code: r.decisive for r in answer.reasons}
    assert codes == {"out_of_distribution": False, "no_usable_modality": True}
