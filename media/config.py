"""The decode stage's settings, apart from the decoder so that reading them loads neither PyAV nor dlib."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class DecodeConfig(BaseModel):
    """The decode stage's settings: limits and sampling choices for `decode_media`.

    MediaDecoder's `user_config` is exactly this model (a typo is an error); training and the
    benchmark read the same model from the Serve profile. The upload's byte limit is the HTTP
    edge's (`IngressConfig.max_upload_bytes`), checked before the bytes are buffered.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    analysis_fps: float = Field(10.0, gt=0, le=60)  # sampling grid rate for videos up to max_frames / analysis_fps long
    max_frames: int = Field(100, ge=1, le=1000)  # longer videos spread this many samples over their whole duration
    max_side: int = Field(640, ge=64, le=4096)  # sampled frames are resized so the longer side is at most this (aspect kept)
    max_duration_s: float = Field(600.0, gt=0)  # longer media is refused, before decoding where the container says
    max_pixels: int = Field(50_000_000, ge=1)  # coded frame area above this is refused (decompression bombs)
    # Decode budgets (media.decode): an upload that needs more than this much work is refused with 413
    # within seconds instead of holding a decoder replica. Generous for real media: a 10-minute 60 fps
    # video with audio has ~65,000 packets; decoding every frame of a 60 s 1080p30 clip is 3.7e9 pixels.
    max_streams: int = Field(16, ge=1)  # streams in the container
    max_packets: int = Field(200_000, ge=1)  # packets demuxed, over both passes
    max_decoded_frames: int = Field(40_000, ge=1)  # video frames decoded
    max_decoded_pixels: float = Field(8e9, gt=0)  # video pixels decoded
    deadline_s: float = Field(30.0, gt=0)  # wall clock of the whole demux and decode
    # FFmpeg and OpenCV threads; 0 = FFmpeg's automatic count. MediaDecoder sets it from its replica's CPU share.
    threads: int = Field(0, ge=0, le=64)
    face_detect_every: int = Field(20, ge=1)  # run the face detector on every Nth sampled frame; track landmarks in between
    detect_max_side: int = Field(480, ge=64)  # frames are downscaled to this longer side for HOG detection
    # Smallest face, in source pixels, that detection looks for (a cascade on the source picture, each find
    # confirmed by HOG); the search's cost grows as 1 / min_face_side^2. See media/faces.py.
    min_face_side: int = Field(40, ge=24)
    analyze_faces: bool = True  # False skips dlib: every frame faceless, centre-square face crops
    # Video decoding threads; the pixels are the same either way. True: FFmpeg's frame threads
    # (several pictures in flight). False: slice threads only, i.e. one decoding thread unless a
    # picture is cut into several slices. Which is faster depends on the stream: measured on
    # 2 cores (bench/changes.md), frame threads decode one-slice H.264 (most uploads) faster; slice
    # threads decode several-slice H.264 faster and cost less CPU on long clips.
    frame_threads: bool = True
