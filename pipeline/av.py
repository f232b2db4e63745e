"""The AV stage: lip/speech synchrony, A/V offset and audio spoofing (the spoof head alone without usable lips)."""

from __future__ import annotations

import numpy as np
import torch

from models import AVAlignmentModel, audio_features, av_features
from models.bundle import LoadedBundle
from models.channel import channel_profile
from models.ood import OODStats
from models.vad import speech_seconds
from pipeline.config import AVConfig
from pipeline.results import AVResult, BranchResult, ModelInfo, StageInput, sigmoid
from pipeline.tensors import audio_to_tensor, lips_to_tensor, mouths_to_tensor, times_to_tensor
from pipeline.timing import Timer


_LEAST_OFFSET_MS = 20.0  # about a frame at 50 fps, and the offset head's error on clips in sync (11-12 ms)


def served_audio(clip: StageInput, config: AVConfig) -> np.ndarray:
    """The audio the model reads: the first `max_audio_s` seconds."""
    return clip.audio[: int(config.max_audio_s * clip.sample_rate)]


def lips_usable_at(n_frames: int, face_coverage: float, config: AVConfig) -> bool:
    """The sync model runs only when there is motion to see and a face most of the time."""
    return n_frames > 1 and face_coverage >= config.min_face_coverage


def lips_usable(clip: StageInput, config: AVConfig) -> bool:
    return lips_usable_at(clip.n_frames, clip.face_coverage, config)


def has_audio(clip: StageInput) -> bool:
    return bool(clip.has_audio) and clip.audio.size > 0


def judge_voice(
    branch: BranchResult, embedding: np.ndarray, ood: OODStats | None,
    heard: np.ndarray | None = None, channel_ood: OODStats | None = None,
) -> BranchResult:
    """The audio branch abstains (code `out_of_distribution`) on a voice the spoof head never learned either way.

    Two tests, each against statistics of the speech the head was trained on, thresholds fitted on its
    validation speech: the head's embedding far from both classes (`ood`), and the recording itself,
    summarised without the head (`models.channel.channel_profile` of `heard`), unlike every recording
    it learned from (`channel_ood`). The second catches what the first cannot: a recording chain the head
    never heard can land inside its spoof region. The score stays in the answer for the analyst, but
    fusion reads only branches that are `ok`.
    """
    if branch.status != "ok":
        return branch
    why = []
    if ood is not None:
        distance = ood.distance(embedding)
        branch.details.update(ood_distance=round(distance, 3), ood_threshold=round(ood.threshold, 3))
        if distance > ood.threshold:
            why.append(
                f"a voice unlike the authentic and the spoofed speech the audio model learned (distance {distance:.1f}, "
                f"threshold {ood.threshold:.1f})"
            )
    if channel_ood is not None and heard is not None:
        distance = channel_ood.distance(channel_profile(heard))
        branch.details.update(channel_distance=round(distance, 3), channel_threshold=round(channel_ood.threshold, 3))
        if distance > channel_ood.threshold:
            why.append(
                f"a recording unlike every one the audio model learned from (spectrum and noise floor: distance "
                f"{distance:.1f}, threshold {channel_ood.threshold:.1f})"
            )
    branch.out_of_distribution = bool(why)
    if why:
        branch.status, branch.code = "skipped", "out_of_distribution"
        branch.reason = "; ".join(why) + ": its score is a guess and is not used"
    return branch


def consult_expert(
    model: AVAlignmentModel, audio: torch.Tensor, heard: np.ndarray, first: BranchResult,
    ood: OODStats, channel_ood: OODStats,
) -> BranchResult:
    """Where the first spoof head abstained as out of distribution, the speech expert answers if its own two
    tests (against the speech *it* learned) pass; otherwise the branch stays abstained, with both heads' reasons."""
    with Timer() as timer, torch.inference_mode():
        out = model.expert_spoof(audio)
    if out is None:
        return first
    logit, embedding = float(out.spoof_logit[0]), out.embedding[0].float().cpu().numpy()
    expert = BranchResult(
        "audio", "ok", first.model, score=sigmoid(logit), features=audio_features(logit, embedding),
        details={"audio_s": first.details.get("audio_s"), "head": "speech_expert",
                 "first_head_score": first.score, "first_head_reason": first.reason},
        timing_ms=first.timing_ms + timer.ms,
    )
    expert = judge_voice(expert, embedding, ood, heard, channel_ood)
    if expert.status == "ok":
        return expert
    first.details.update({f"expert_{k}": v for k, v in expert.details.items() if k.endswith(("distance", "threshold"))})
    first.reason = f"{first.reason}; the speech expert abstains too: {expert.reason}"
    first.timing_ms = expert.timing_ms
    return first


def run_av(
    model: AVAlignmentModel, clip: StageInput, config: AVConfig, device: str = "cpu", info: ModelInfo | None = None,
    ood: OODStats | None = None, channel_ood: OODStats | None = None,
    expert_ood: OODStats | None = None, expert_channel_ood: OODStats | None = None,
) -> AVResult:
    """With a bundle's statistics (`ood`, `channel_ood`) the audio branch abstains on voices it never learned;
    with a speech expert and its statistics (`expert_ood`, `expert_channel_ood`) the expert answers for those
    it learned instead (`consult_expert`)."""
    if not has_audio(clip):
        return AVResult(
            BranchResult("av", "skipped", info, reason="no audio", code="no_audio"),
            BranchResult("audio", "skipped", info, reason="no audio", code="no_audio"),
        )
    heard = served_audio(clip, config)
    if config.min_speech_s > 0:
        speech_s = speech_seconds(heard, clip.sample_rate)
        if speech_s < config.min_speech_s:
            reason = f"{speech_s:.1f} s of speech heard (the voice models need {config.min_speech_s:g} s)"
            return AVResult(
                BranchResult("av", "skipped", info, reason=reason, code="no_speech"),
                BranchResult("audio", "skipped", info, reason=reason, code="no_speech"),
            )
    audio = audio_to_tensor(heard, device).unsqueeze(0)  # (1, N)
    usable = lips_usable(clip, config)
    with Timer() as timer, torch.inference_mode():
        if usable:
            lips = lips_to_tensor(clip.lip_trajectory, device).unsqueeze(0)  # (1, T, 20, 2)
            mouths = mouths_to_tensor(clip.mouth_crops, device).unsqueeze(0)  # (1, T, h, w)
            times = times_to_tensor(clip.timestamps, device).unsqueeze(0)  # (1, T)
            out = model(audio, lips, mouths, times)
            spoof_logit, embedding = float(out.spoof_logit[0]), out.embedding[0].float().cpu().numpy()
        else:
            spoof = model.spoof(audio)
            spoof_logit, embedding = float(spoof.spoof_logit[0]), spoof.embedding[0].float().cpu().numpy()
    audio_branch = BranchResult(
        "audio", "ok", info, score=sigmoid(spoof_logit),
        features=audio_features(spoof_logit, embedding),
        details={"audio_s": round(audio.shape[1] / clip.sample_rate, 3)},
        timing_ms=timer.ms,
    )
    audio_branch = judge_voice(audio_branch, embedding, ood, heard, channel_ood)
    if audio_branch.code == "out_of_distribution" and expert_ood is not None and expert_channel_ood is not None:
        audio_branch = consult_expert(model, audio, heard, audio_branch, expert_ood, expert_channel_ood)
    if not usable:
        if clip.n_frames <= 1:
            skipped = BranchResult("av", "skipped", info, reason="no video", code="no_video")
        else:
            reason = f"face in {clip.face_coverage:.0%} of frames (lips need {config.min_face_coverage:.0%})"
            skipped = BranchResult("av", "skipped", info, reason=reason, code="no_face")
        return AVResult(skipped, audio_branch)
    sync_logit, offset_ms = float(out.sync_logit[0]), float(out.offset_ms[0])
    details = {"sync_probability": sigmoid(sync_logit), "offset_ms": offset_ms}
    lag = capture_offset(offset_ms, config)
    if lag:
        with Timer() as again, torch.inference_mode():
            out = model(audio, lips, mouths, times - lag / 1000.0)  # the lips moved by the lag
        timer.ms += again.ms
        # Kept where the lips match the sound better there and the offset head agrees that nothing is left over
        # (a fake whose first estimate fell in the window by chance gets neither).
        if float(out.sync_logit[0]) > sync_logit and abs(float(out.offset_ms[0])) < _LEAST_OFFSET_MS:
            sync_logit, embedding = float(out.sync_logit[0]), out.embedding[0].float().cpu().numpy()
            details.update(
                as_recorded_sync_probability=details["sync_probability"], capture_offset_ms=round(lag, 1),
                sync_probability=sigmoid(sync_logit), offset_ms=lag + float(out.offset_ms[0]),
            )
            offset_ms = float(out.offset_ms[0])  # what is left once the capture offset is taken out
    av_branch = BranchResult(
        "av", "ok", info,
        score=1.0 - details["sync_probability"],  # P(fake) rises as synchrony falls
        # A spoof head of its own (v2) reports through the audio branch only: fusion does not read it twice.
        features=av_features(sync_logit, offset_ms, spoof_logit if model.config.spoof_net is None else 0.0, embedding),
        details=details,
        timing_ms=timer.ms,
    )
    return AVResult(av_branch, audio_branch)


def capture_offset(offset_ms: float, config: AVConfig, least_ms: float = _LEAST_OFFSET_MS) -> float:
    """The offset (ms, + audio early) to take out before judging synchrony: the offset head's estimate where it is
    one a capture chain makes (within `capture_lead_ms` early / `capture_lag_ms` late), else 0. Under `least_ms`
    the clip is judged as recorded: that is within one video frame and the offset head's own error."""
    if abs(offset_ms) < least_ms or not -config.capture_lag_ms <= offset_ms <= config.capture_lead_ms:
        return 0.0
    return offset_ms


def run_av_bundle(
    bundle: LoadedBundle, clip: StageInput, config: AVConfig, device: str = "cpu", info: ModelInfo | None = None,
) -> AVResult:
    """`run_av` with a loaded av_alignment bundle's model and every statistics file it carries."""
    return run_av(
        bundle.model, clip, config, device, info, bundle.ood, bundle.channel_ood, bundle.expert_ood,
        bundle.expert_channel_ood,
    )
