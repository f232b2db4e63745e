"""AVAlignment: lip/speech synchrony, A/V offset and audio spoofing (alone for audio uploads).

Not `@serve.batch`ed, unlike the other models: clips' audio lengths differ, and padding would
change every answer (the waveform is normalised as a whole, Wav2Vec2's group-norm feature encoder
and the statistics pooling and attention all read the padded samples) unless masks were threaded
through the whole model.
"""

from __future__ import annotations

import asyncio

import numpy as np
import torch
from pydantic import Field
from ray import serve

from deployments.common import AVResult, BranchResult, Timer, VersionedModel, WeightsConfig, configure_torch_threads, sigmoid
from media import Clip
from models.fusion import audio_features, av_features


class AVConfig(WeightsConfig):
    """user_config of AVAlignment."""

    min_face_coverage: float = Field(0.5, ge=0.0, le=1.0)  # below this the lips are not trusted
    max_audio_s: float = Field(30.0, gt=0)  # longer audio is cut to bound latency


@serve.deployment(name="AVAlignment", ray_actor_options={"num_cpus": 1})
class AVAlignmentDeployment:
    def __init__(self, weights_dir: str | None = None) -> None:
        configure_torch_threads()
        self.weights = VersionedModel("AVAlignment", "av_alignment", weights_dir)
        self.config = AVConfig()

    def reconfigure(self, user_config: dict) -> None:
        self.config = AVConfig.model_validate(user_config or {})
        self.weights.apply(self.config)

    def _run(self, bundle, clip: Clip) -> AVResult:
        cfg = self.config
        info = self.weights.info(bundle)
        if not clip.meta.has_audio or clip.audio.size == 0:
            skipped = BranchResult("av", "skipped", info, reason="no audio")
            return AVResult(skipped, BranchResult("audio", "skipped", info, reason="no audio"))
        dev = self.weights.device
        audio = torch.from_numpy(np.array(clip.audio[: int(cfg.max_audio_s * clip.sample_rate)], np.float32))
        audio = audio.to(dev).unsqueeze(0)  # (1, N)
        lips_usable = clip.n_frames > 1 and clip.meta.face_coverage >= cfg.min_face_coverage
        with Timer() as timer, torch.inference_mode():
            if lips_usable:
                out = bundle.model(
                    audio,
                    torch.from_numpy(np.array(clip.lip_trajectory, np.float32)).to(dev).unsqueeze(0),  # (1, T, 20, 2)
                    torch.from_numpy(np.array(clip.mouth_crops, np.float32) / 255.0).to(dev).unsqueeze(0),  # (1, T, h, w)
                    torch.from_numpy(np.array(clip.timestamps, np.float32)).to(dev).unsqueeze(0),  # (1, T)
                )
                spoof_logit, embedding = float(out.spoof_logit[0]), out.embedding[0].float().cpu().numpy()
            else:
                spoof = bundle.model.spoof(audio)
                spoof_logit, embedding = float(spoof.spoof_logit[0]), spoof.embedding[0].float().cpu().numpy()
        audio_branch = BranchResult(
            "audio", "ok", info, score=sigmoid(spoof_logit),
            features=audio_features(spoof_logit, embedding),
            details={"audio_s": round(audio.shape[1] / clip.sample_rate, 3)},
            timing_ms=timer.ms,
        )
        if not lips_usable:
            reason = "no video" if clip.n_frames <= 1 else f"face in {clip.meta.face_coverage:.0%} of frames"
            return AVResult(BranchResult("av", "skipped", info, reason=reason), audio_branch)
        sync_logit, offset_ms = float(out.sync_logit[0]), float(out.offset_ms[0])
        sync_p = sigmoid(sync_logit)
        av_branch = BranchResult(
            "av", "ok", info,
            score=1.0 - sync_p,  # P(fake) rises as synchrony falls
            features=av_features(sync_logit, offset_ms, spoof_logit, embedding),
            details={"sync_probability": sync_p, "offset_ms": offset_ms},
            timing_ms=timer.ms,
        )
        return AVResult(av_branch, audio_branch)

    async def __call__(self, clip: Clip, pin: str | None = None) -> AVResult:
        """`pin` names a served version (primary or canary) for A/B checks; else canary/primary by fraction."""
        bundle = self.weights.choose(pin)
        return await asyncio.to_thread(self._run, bundle, clip)

    def info(self):
        return self.weights.info()
