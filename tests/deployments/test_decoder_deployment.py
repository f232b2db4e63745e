"""MediaDecoder's replica: one decode at a time, the next upload waiting inside, full frames left out, metadata beside the clip."""

import asyncio
import threading
import time

import numpy as np

import deployments.decoder as decoder_module
from tests.mediagen import encode_video, numbered_frames


def test_one_decode_at_a_time_and_the_clip_sent_without_frames(monkeypatch) -> None:
    real_decode = decoder_module.decode
    running, most = [0], [0]
    lock = threading.Lock()

    def counting_decode(data, config, keep_frames=False):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(0.2)  # long enough for the second call to arrive while this one runs
            return real_decode(data, config, keep_frames)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(decoder_module, "decode", counting_decode)
    replica = decoder_module.MediaDecoderDeployment.func_or_class()
    replica.reconfigure({"face_detect_every": 5})
    data = encode_video(numbered_frames(20, size=(128, 96)), "mp4", "libx264", 10)

    async def upload() -> bytes:  # stands in for the ObjectRef the ingress passes
        return data

    async def both():
        return await asyncio.gather(replica.decode([upload()]), replica.decode([upload()]))

    answers = asyncio.run(both())
    assert most[0] == 1  # max_ongoing_requests 2 queues the second upload; the lock keeps decodes serial
    for answer in answers:
        clip = answer.clip  # outside Ray the clip itself; in a replica `[ObjectRef]` to it
        assert answer.n_frames == 20 and answer.meta.kind == "video" and answer.model.deployment == "MediaDecoder"
        assert clip.frames is None and clip.n_frames == 20
        assert clip.flow_frames.shape[0] == 20 and clip.face_crops.shape[0] == 20
        assert np.isfinite(clip.timestamps).all()
