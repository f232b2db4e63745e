"""Upload bytes -> `Clip`: demux and decode with PyAV in-process, sample frames, analyse faces.

What the upload is comes from its content (FFmpeg's probe, then OpenCV for stills FFmpeg
cannot open), never from a filename. Video is sampled on a fixed time grid, audio is
resampled to 16 kHz mono, frames come out upright and at most `max_side` pixels long.

Sampling grid. Sample k shows what a player displays at t_k = k * step seconds after the
first video frame: the latest decoded frame whose presentation time is <= t_k. Normally
step = 1 / analysis_fps. A video longer than max_frames / analysis_fps gets
step = duration / max_frames instead, so the max_frames samples cover the whole video at a
lower effective rate rather than only its beginning: a manipulated segment can be anywhere.
`Clip.timestamps` holds the grid times t_k, so variable-frame-rate input still yields a
regular time axis. A cheap demux-only pass finds every frame's time first; groups of
pictures (keyframe to keyframe) that hold no sampled frame are then never decoded (the
previous group is kept when a sampled frame is an open-GOP leading picture that references
it); inside the groups that are decoded, the decoder skips non-reference pictures (B-frames
nothing predicts from) unless one is a sampled frame, so the sampled frames come out exactly
as a full decode would give them (a 10 s 720p30 H.264 clip sampled at 10 fps decodes 201 of
its 300 frames); and only sampled frames are converted to RGB.

Rotation. Phones store portrait video sideways plus a display matrix; FFmpeg attaches it to
each decoded frame (PyAV `VideoFrame.rotation`, counter-clockwise degrees), with the legacy
`rotate` stream tag (clockwise degrees) as a fallback. Frames are rotated by it, rounded to a
multiple of 90 (mirroring in a display matrix is ignored). JPEG EXIF orientation arrives the
same way. `ClipMeta.width/height` are the upright display size (sample aspect ratio applied)
and `ClipMeta.rotation` is the clockwise rotation applied, the convention of the legacy tag
and of EXIF tools (an iPhone portrait video reports 90).

Audio. `Clip.audio` sample 0 is the time of the first video frame (audio that starts later
is padded with silence, audio that starts earlier is trimmed), so sample n lines up with
frame time n / 16000. For audio-only input sample 0 is the first decoded sample. The first
audio stream is used; channels are downmixed by FFmpeg's resampler.

Shapes by kind: video T = sampled frames; image T = 1 with timestamps [0.0]; audio-only
T = 0 with frames `(0, 0, 0, 3)` (there is no picture size, matching width = height = 0),
flow frames `(0, 0, 0)`, and every other per-frame array `(0, ...)` with its usual trailing shape.

Errors: empty or undemuxable bytes, and containers holding only subtitles or data ->
NotMediaError (415); duration over `max_duration_s` or frames over
`max_pixels`, or work over a decode budget (`max_streams`, `max_packets`, `max_decoded_frames`,
`max_decoded_pixels`, `deadline_s`, checked packet by packet) -> MediaTooLargeError (413); a
container or codec outside the allow-lists (`ALLOWED_DEMUXERS`, `ALLOWED_*_CODECS`) ->
NotMediaError (415); a recognised container with nothing decodable (no
streams, no packets, a video stream none of whose frames decode) -> UnusableMediaError (422).
What FFmpeg cannot open is "not media": an MP4 cut before its `moov` index (written last by
default) raises NotMediaError, a fragmented MP4 cut after its header raises
UnusableMediaError, and one cut mid-way decodes to the frames that survived. A video track
with no packets at all is ignored (the upload is treated as audio). Nested resources
(ffconcat lists, playlists) are never opened.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import av
import av.error
import cv2
import numpy as np
import PIL.Image

from media.clip import AUDIO_SAMPLE_RATE, Clip, ClipMeta, MediaKind
from media.config import DecodeConfig
from media.errors import (
    DecodeDeadlineError,
    MediaError,
    MediaTooLargeError,
    NotMediaError,
    UnusableMediaError,
)
from media.faces import (
    ArraySource,
    EarlyDetections,
    FaceAnalyzer,
    FaceTrack,
    FaceView,
    SourceFrame,
    default_analyzer,
    faceless_track,
    speech_following,
)
from media.keyframes import small_gray

# (sample index k, upright RGB frame (H, W, 3) at analysis size, the same frame at its source resolution)
FrameCallback = Callable[[int, np.ndarray, SourceFrame], None]

# FFmpeg demuxers that read one still image ("png_pipe", "jpeg_pipe", "webp_pipe", ...).
_IMAGE_DEMUXERS = {"image2", "image2pipe"}
# Codecs that make a still image when a stream without audio holds one packet (e.g. GIF).
_STILL_CODECS = {"png", "apng", "mjpeg", "jpegls", "webp", "gif", "bmp", "tiff", "jpeg2000", "qoi", "jpegxl"}
# HEIF / AVIF stills (`ftyp` major brand). libheif (pillow-heif) decodes HEIC whole, tile grids
# included (what phones write). What it cannot decode here (AVIF: the wheel has no AV1 decoder) goes
# to FFmpeg, whose MP4 demuxer shows a one-image file as a one-frame track and a grid as one stream
# per tile, which PyAV cannot put back together.
_HEIF_BRANDS = {"heic", "heix", "heim", "heis", "mif1", "msf1", "avif", "avis"}
# Nested resources (ffconcat lists, playlists, external references) may not be opened: an
# upload must never make us read local files or the network. Probing is bounded too (FFmpeg's
# defaults, stated), and `max_pixels` (added per call) stops the codec from decoding an
# oversized picture while probing: a 16000x16000 PNG would otherwise allocate ~730 MB first.
_CONTAINER_OPTIONS = {"protocol_whitelist": "none", "probesize": "5000000", "analyzeduration": "5000000"}

# What the service decodes. Every other FFmpeg demuxer and decoder stays unreachable from an
# upload (415): a text file must not become Nintendo ADPCM audio, nor `ID3` + noise a CD+G video.
ALLOWED_DEMUXERS = frozenset({
    "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "avi", "flv", "mpegts", "mpeg", "asf", "ogg",  # video containers
    "wav", "mp3", "flac", "aac", "aiff", "caf", "amr", "w64", "gsm", "au", "wv", "ac3", "eac3",  # audio ("gsm":
    # raw GSM 06.10, telephony; "au": Sun/NeXT .snd, mu-law voice files; "wv": WavPack; "ac3"/"eac3": the Dolby
    # Digital tracks of broadcast and disc rips, demuxed to .ac3/.eac3 files)
    "image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe", "gif", "apng",  # stills
})
ALLOWED_VIDEO_CODECS = frozenset({
    "h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mpeg1video", "mpeg2video", "h263", "theora", "flv1",
    "wmv1", "wmv2", "wmv3", "vc1", "msmpeg4v3", "prores", "mjpeg", "png", "apng", "gif", "webp", "bmp", "tiff",
})
ALLOWED_AUDIO_CODECS = frozenset({
    "aac", "mp3", "mp2", "opus", "vorbis", "flac", "alac", "ac3", "eac3", "amrnb", "amrwb",
    "wmav1", "wmav2", "pcm_s16le", "pcm_s16be", "pcm_s24le", "pcm_s24be", "pcm_s32le", "pcm_s32be",
    "pcm_f32le", "pcm_f32be", "pcm_f64le", "pcm_u8", "pcm_s8", "pcm_mulaw", "pcm_alaw", "wavpack",
    # telephony: call recordings and IVR prompts arrive as GSM 06.10 (raw, or in WAV) and ADPCM/G.72x in WAV
    # (FFmpeg's G.726 decoders are named g726 and g726le, its encoder adpcm_g726)
    "gsm", "gsm_ms", "adpcm_ms", "adpcm_ima_wav", "g722", "g726", "g726le",
})
# Stills OpenCV may try when FFmpeg cannot open them, by magic bytes: JPEG, PNG, BMP, TIFF, WebP.
_STILL_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"BM", b"II*\x00", b"MM\x00*")
_TIME_EPS = 1e-6  # seconds; absorbs time-base rounding when comparing frame and grid times
_VFR_TOLERANCE = 0.10  # frame intervals spreading more than this (relative) make a stream variable-rate
# Everything PyAV/OpenCV raise on malformed input; mapped to MediaErrors, never leaked.
_DECODE_ERRORS = (av.error.FFmpegError, OSError, EOFError, ValueError, RuntimeError, cv2.error)


def _allowed_codec(ctx: av.codec.context.CodecContext | None, allowed: frozenset[str]) -> str | None:
    """The name a stream's codec is allowed (and reported) by, or None: its codec's name where `allowed` holds
    it, else the name of the decoder FFmpeg picked where `allowed` holds that. AV1 is decoded by libdav1d
    (this FFmpeg's own `av1` decoder needs hardware) and MP3 by `mp3float`: both are allowed and reported
    by the codec, `av1` and `mp3`, as FFmpeg's codec list names them; G.726 by its decoders' names."""
    if ctx is None:
        return None
    canonical = ctx.codec.canonical_name if ctx.codec is not None else None
    if canonical in allowed:
        return canonical
    return ctx.name if ctx.name in allowed else None


def decode_media(data: bytes, config: DecodeConfig = DecodeConfig(), analyzer: FaceAnalyzer | None = None) -> Clip:
    """Decode an upload into a `Clip`, or raise a `MediaError` subclass saying why not.

    `analyzer` defaults to the per-process `FaceAnalyzer`: dlib objects are not thread-safe
    and loading the landmark model per call would dominate small uploads. Face detection runs
    on a worker thread as sampled frames arrive (`EarlyDetections`), beside FFmpeg's decoding,
    and looks for small faces in the decoded picture at its source resolution, before it is
    scaled to `max_side`; small faces' detail views are cut from it too. Landmarks and crops
    follow once every frame is in. For malformed input only `MediaError`s escape.
    """
    if not data:
        raise NotMediaError("empty upload")
    analyzer = (analyzer or default_analyzer()) if config.analyze_faces else None
    early = (
        EarlyDetections(analyzer, config.face_detect_every, config.detect_max_side, config.min_face_side)
        if analyzer
        else None
    )
    views: dict[int, list[FaceView]] = {}
    try:
        decoded = _decode(data, config, early.offer if early else None)
        detected = early.results() if early else {}
        views = early.views if early else {}
    except MediaError:
        raise
    except _DECODE_ERRORS as exc:
        raise UnusableMediaError(f"could not decode media: {exc}") from exc
    finally:
        if early:
            early.close()
    frames = decoded.frames  # (T, H, W, 3)
    if analyzer is not None and len(frames):
        def speaking(t: FaceTrack) -> float:
            return speech_following(t.lip_trajectory, t.face_found, decoded.timestamps, decoded.audio, AUDIO_SAMPLE_RATE)

        track = analyzer.analyze(
            frames, config.face_detect_every, config.detect_max_side, detected, views, config.min_face_side,
            _sampling_step(decoded.timestamps, config), speaking if decoded.audio.size else None,
        )
    else:
        track = faceless_track(frames)
    decoded.meta.face_coverage = track.coverage
    decoded.meta.faces_seen = track.faces_seen
    decoded.meta.face_chosen_by = track.chosen_by
    decoded.meta.n_frames = len(frames)
    return _assemble(decoded, track)


def _sampling_step(timestamps: np.ndarray, config: DecodeConfig) -> float:
    """Seconds between sampled frames (the median step; the grid's where there is no step to measure)."""
    steps = np.diff(timestamps)
    steps = steps[steps > 0]
    return float(np.median(steps)) if steps.size else 1.0 / config.analysis_fps


@dataclass
class _Decoded:
    """Everything but the face analysis."""

    meta: ClipMeta
    frames: np.ndarray  # (T, H, W, 3) uint8
    timestamps: np.ndarray  # (T,) float64
    audio: np.ndarray  # (N,) float32 at AUDIO_SAMPLE_RATE


def flow_frames(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) RGB -> (T, h, w) grey at most FLOW_MAX_SIDE long: what keyframe selection reads."""
    if len(frames) == 0:
        return np.zeros((0, 0, 0), np.uint8)
    return np.stack([small_gray(frame) for frame in frames])


def _assemble(decoded: _Decoded, track: FaceTrack) -> Clip:
    return Clip(
        meta=decoded.meta,
        frames=decoded.frames,
        timestamps=decoded.timestamps,
        face_found=track.face_found,
        face_boxes=track.face_boxes,
        landmarks=track.landmarks,
        face_crops=track.face_crops,
        mouth_crops=track.mouth_crops,
        lip_trajectory=track.lip_trajectory,
        flow_frames=flow_frames(decoded.frames),
        audio=decoded.audio,
        sample_rate=AUDIO_SAMPLE_RATE,
    )


@dataclass
class _VideoInfo:
    """What the decode pass needs to know about the chosen video stream."""

    index: int
    codec: str
    rate: float  # average frame rate, used only when frames carry no timestamps
    native_fps: float | None
    time_base: float
    sar: float  # sample (pixel) aspect ratio
    rotate_tag: int  # legacy clockwise `rotate` tag; 0 when absent


def _decode(data: bytes, config: DecodeConfig, on_frame: FrameCallback | None = None) -> _Decoded:
    """Probe, pick streams, scan, then decode: the whole pipeline minus faces.

    `on_frame(k, rgb, source)` sees each sampled video frame as soon as it is converted.
    """
    budget = _Budget(config)
    heif = _is_heif(data)
    still = _decode_with_libheif(data, config, on_frame) if heif else None
    if still is not None:
        return still
    try:
        container = _open(data, config)
    except _DECODE_ERRORS as exc:
        still = _decode_with_opencv(data, config, on_frame)
        if still is None:
            raise NotMediaError(f"not a recognised media format: {exc}") from exc
        return still
    with container:
        fmt = container.format.name
        if fmt not in ALLOWED_DEMUXERS:
            raise NotMediaError(f"unsupported format ({fmt}): send a video, image or audio file")
        name = _container_name(fmt, dict(container.metadata), data[:64])
        if len(container.streams) > config.max_streams:
            raise MediaTooLargeError(f"{name}: {len(container.streams)} streams; the limit is {config.max_streams}")
        video = _pick_video_stream(container)
        audio = container.streams.audio[0] if container.streams.audio else None
        if heif and len(container.streams.video) > 1:
            raise NotMediaError(
                f"{name}: a tiled HEIF/AVIF image ({len(container.streams.video)} tiles) is not supported: "
                "send it as JPEG or PNG"
            )
        for stream, allowed in ((video, ALLOWED_VIDEO_CODECS), (audio, ALLOWED_AUDIO_CODECS)):
            if stream is not None and _allowed_codec(stream.codec_context, allowed) is None:
                codec = stream.codec_context.name if stream.codec_context else None
                raise NotMediaError(f"{name}: unsupported {stream.type} codec ({codec})")
        if video is None and audio is None:
            if not len(container.streams):  # a recognised container with nothing in it
                raise UnusableMediaError(f"{name}: the container holds no stream")
            raise NotMediaError(f"{name} data holds no audio or video stream")
        if container.duration is not None and container.duration / 1e6 > config.max_duration_s + _TIME_EPS:
            raise MediaTooLargeError(f"duration {container.duration / 1e6:.1f} s exceeds {config.max_duration_s:g} s")
        audio_codec = _allowed_codec(audio.codec_context, ALLOWED_AUDIO_CODECS) if audio is not None else None
        first_audio_index = audio.index if audio is not None else None  # stream objects die with the container
        info = scan = None
        if video is not None:
            info = _video_info(video, config, data)
            scan = _scan_video(container, video, info, config, budget)
            if not len(scan.times):
                info = scan = None  # a declared but empty video track: treat as absent
    single_still = scan is not None and len(scan.times) == 1 and first_audio_index is None
    is_image = info is not None and (
        fmt.endswith("_pipe") or fmt in _IMAGE_DEMUXERS or (single_still and (info.codec in _STILL_CODECS or heif))
    )
    audio_index = None if is_image else first_audio_index
    if info is None and audio_index is None:
        raise UnusableMediaError(f"{name}: no video frames and no audio stream")
    kind: MediaKind = "image" if is_image else "video" if info is not None else "audio"
    grid = _plan_grid(scan, kind, info.native_fps, config) if info is not None and scan is not None else None
    frames, audio_samples, rotation, display = _decode_streams(
        data, info, audio_index, scan, grid, config, budget, on_frame
    )
    if info is not None and frames is None:
        raise UnusableMediaError(f"{name}: the {info.codec} video stream has no decodable frame")
    if kind == "audio" and not len(audio_samples):
        raise UnusableMediaError(f"{name}: the {audio_codec} audio stream has no decodable sample")
    audio_seconds = len(audio_samples) / AUDIO_SAMPLE_RATE
    if kind == "audio":
        frames = np.zeros((0, 0, 0, 3), np.uint8)  # (0, 0, 0, 3): no picture, width = height = 0
        timestamps = np.zeros(0, np.float64)
        duration = audio_seconds
    elif kind == "image":
        timestamps = np.zeros(1, np.float64)
        duration = 0.0
    else:
        assert grid is not None
        timestamps = grid.times - grid.times[0]  # (T,)
        duration = max(grid.span, audio_seconds)
    assert frames is not None
    meta = ClipMeta(
        kind=kind,
        duration_s=float(duration),
        native_fps=info.native_fps if kind == "video" and info is not None else None,
        width=display[0],
        height=display[1],
        rotation=rotation,
        has_audio=bool(len(audio_samples)),
        has_video=kind != "audio",
        face_coverage=0.0,
        container=name,
        video_codec=info.codec if info is not None else None,
        audio_codec=audio_codec if len(audio_samples) else None,
        variable_frame_rate=kind == "video" and _is_variable_rate(scan, info),
        n_frames=len(frames),
        size_bytes=len(data),
    )
    return _Decoded(meta, frames, timestamps, audio_samples)


def _open(data: bytes, config: DecodeConfig) -> av.container.InputContainer:
    options = {"max_pixels": str(config.max_pixels)}
    if config.threads:
        options["threads"] = str(config.threads)
    return av.open(io.BytesIO(data), container_options=_CONTAINER_OPTIONS, options=options, metadata_errors="replace")


class _Budget:
    """The decode's work so far against `DecodeConfig`'s budgets: over any of them is a 413, raised within one
    packet of crossing it, so a bomb costs a replica at most `deadline_s` (a cancellable loop, not a thread
    nobody can stop)."""

    # Projections: after PROJECT_AFTER_PACKETS planned packets, a decode whose pace says it will decode more
    # than PROJECTION_SLACK x the frame or pixel budget is refused at once (counts: deterministic). After
    # PROJECT_AFTER_S, one whose pace says it will end later than TIME_SLACK x the time left before the
    # deadline. Time is the noisy one: the first pictures are slow (the first face detection, decoder
    # start-up, other replicas on the same cores), and a 0.5 s / 1.25x rule refused 2 of 80 legitimate
    # 60 s 1080p clips at concurrency 4 in the benchmark; hence 3 s and 2x.
    PROJECT_AFTER_PACKETS = 8
    PROJECTION_SLACK = 1.25
    PROJECT_AFTER_S = 3.0
    TIME_SLACK = 2.0

    def __init__(self, config: DecodeConfig) -> None:
        self.config = config
        self.deadline = time.monotonic() + config.deadline_s
        self.packets = self.frames = 0
        self.pixels = 0.0
        self.planned = 0  # video packets the decode pass will feed the decoder
        self.fed = 0
        self.started = 0.0

    def plan(self, video_packets: int) -> None:
        """Start of the decode pass: it will feed `video_packets` packets to the video decoder."""
        self.planned, self.fed, self.started = video_packets, 0, time.monotonic()

    def fed_video(self) -> None:
        """One planned video packet decoded: refuse now if the pace so far cannot finish within the budgets."""
        self.fed += 1
        if self.fed < self.PROJECT_AFTER_PACKETS or self.planned <= self.fed:
            return
        scale = self.planned / self.fed  # pictures decoded per packet fed so far, skipped ones included
        for done, limit, what in (
            (self.frames, self.config.max_decoded_frames, "video frames"),
            (self.pixels, self.config.max_decoded_pixels, "pixels"),
        ):
            if done * scale > self.PROJECTION_SLACK * limit:
                raise MediaTooLargeError(
                    f"would decode about {done * scale:.3g} {what} at its pace so far "
                    f"({self.fed} of {self.planned} pictures); the limit is {limit:.3g}"
                )
        now = time.monotonic()
        spent = now - self.started
        if spent < self.PROJECT_AFTER_S:
            return
        remaining = spent / self.fed * (self.planned - self.fed)
        if remaining > self.TIME_SLACK * max(self.deadline - now, 0.0):
            raise DecodeDeadlineError(
                f"decoding would take about {spent + remaining:.0f} s at its pace so far "
                f"({self.fed} of {self.planned} pictures in {spent:.1f} s); the limit is {self.config.deadline_s:g} s"
            )

    def packet(self) -> None:
        self.packets += 1
        if self.packets > self.config.max_packets:
            raise MediaTooLargeError(f"more than {self.config.max_packets} packets to read")
        if time.monotonic() > self.deadline:
            raise DecodeDeadlineError(f"decoding takes more than {self.config.deadline_s:g} s")

    def frame(self, frame: av.VideoFrame) -> None:
        self.frames += 1
        self.pixels += frame.width * frame.height
        if self.frames > self.config.max_decoded_frames:
            raise MediaTooLargeError(f"more than {self.config.max_decoded_frames} video frames to decode")
        if self.pixels > self.config.max_decoded_pixels:
            raise MediaTooLargeError(f"more than {self.config.max_decoded_pixels:.3g} pixels to decode")


def _video_info(video: av.video.stream.VideoStream, config: DecodeConfig, data: bytes) -> _VideoInfo:
    """Stream facts, refusing oversized frames and codecs FFmpeg cannot decode."""
    ctx = video.codec_context
    if ctx is None:
        raise UnusableMediaError("no decoder for the video stream's codec")
    if not ctx.width or not ctx.height:  # probing could not size a picture: over max_pixels, or corrupt
        width, height = _still_size(data) or (0, 0)
        if width * height > config.max_pixels:
            raise MediaTooLargeError(f"image size {width}x{height} exceeds {config.max_pixels} pixels")
        raise UnusableMediaError(f"the {ctx.name} video stream has no decodable picture within {config.max_pixels} pixels")
    if ctx.width * ctx.height > config.max_pixels:
        raise MediaTooLargeError(f"frame size {ctx.width}x{ctx.height} exceeds {config.max_pixels} pixels")
    try:
        rotate_tag = int(float(video.metadata.get("rotate", 0)))
    except ValueError:
        rotate_tag = 0
    average = float(video.average_rate) if video.average_rate else None
    guessed = float(video.guessed_rate) if video.guessed_rate else None
    return _VideoInfo(
        index=video.index,
        codec=_allowed_codec(ctx, ALLOWED_VIDEO_CODECS) or ctx.name,
        rate=average or guessed or 25.0,
        native_fps=average or guessed,
        time_base=float(video.time_base) if video.time_base else 0.0,
        sar=float(video.sample_aspect_ratio) if video.sample_aspect_ratio else 1.0,
        rotate_tag=rotate_tag,
    )


@dataclass
class _Scan:
    """Demux-only pass over the video stream: one entry per packet, in decode order."""

    times: np.ndarray  # (P,) presentation time, seconds
    gops: np.ndarray  # (P,) index of the keyframe-to-keyframe group each packet belongs to
    durations: np.ndarray  # (P,) packet duration, seconds (0 when the container omits it)


@dataclass
class _Grid:
    times: np.ndarray  # (T,) absolute sample times, seconds (stream clock)
    span: float  # video duration, seconds
    needed_gops: set[int] = field(default_factory=set)
    shown_packets: set[int] = field(default_factory=set)  # decode-order indices of the sampled frames


def _pick_video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream | None:
    """First video stream that is real video, not an MP3/M4A cover picture."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    return None


def _scan_video(
    container: av.container.InputContainer,
    video: av.video.stream.VideoStream,
    info: _VideoInfo,
    config: DecodeConfig,
    budget: _Budget,
) -> _Scan:
    """Read every video packet without decoding; a demux error ends the scan like EOF would."""
    tb = info.time_base
    times: list[float] = []
    gops: list[int] = []
    durations: list[float] = []
    gop = 0
    try:
        for packet in container.demux(video):
            budget.packet()
            if packet.size == 0:
                continue
            if packet.is_keyframe and times:
                gop += 1
            stamp = packet.pts if packet.pts is not None else packet.dts
            times.append(stamp * tb if stamp is not None else math.nan)
            gops.append(gop)
            durations.append(packet.duration * tb if packet.duration else 0.0)
            if not math.isnan(times[-1]) and times[-1] - times[0] > config.max_duration_s + _TIME_EPS:
                raise MediaTooLargeError(f"video lasts more than {config.max_duration_s:g} s")
    except av.error.FFmpegError:
        pass
    t = np.array(times, np.float64)
    if len(t) and np.isnan(t).any():  # no usable timestamps: assume constant rate in decode order
        t = np.arange(len(t)) / info.rate
    return _Scan(times=t, gops=np.array(gops, np.int64), durations=np.array(durations, np.float64))


def _plan_grid(scan: _Scan, kind: MediaKind, native_fps: float | None, config: DecodeConfig) -> _Grid:
    """Sample times and the groups of pictures that hold the frames shown at them."""
    order = np.argsort(scan.times, kind="stable")
    sorted_t = scan.times[order]
    start = float(sorted_t[0])
    intervals = np.diff(sorted_t)
    intervals = intervals[intervals > 0]
    typical = float(np.median(intervals)) if len(intervals) else 1.0 / (native_fps or config.analysis_fps)
    last_duration = float(scan.durations[order[-1]]) or typical
    span = float(sorted_t[-1] - start + last_duration)
    if span > config.max_duration_s + _TIME_EPS:
        raise MediaTooLargeError(f"video lasts {span:.1f} s; the limit is {config.max_duration_s:g} s")
    if kind == "image":
        n, step = 1, 0.0
    else:
        n = max(1, math.ceil(span * config.analysis_fps - 1e-6))
        step = 1.0 / config.analysis_fps
        if n > config.max_frames:
            n, step = config.max_frames, span / config.max_frames
    times = start + np.arange(n) * step  # (T,)
    shown = order[np.maximum(np.searchsorted(sorted_t, times + _TIME_EPS, side="right") - 1, 0)]  # (T,) packet index
    gop_start = {}  # gop -> presentation time of its first packet (the keyframe)
    for packet in range(len(scan.gops) - 1, -1, -1):
        gop_start[int(scan.gops[packet])] = float(scan.times[packet])
    needed = set()
    for packet in shown:
        gop = int(scan.gops[packet])
        needed.add(gop)
        if scan.times[packet] < gop_start[gop] and gop > 0:
            needed.add(gop - 1)  # a leading picture of an open GOP references the previous group
    return _Grid(times=times, span=span, needed_gops=needed, shown_packets={int(p) for p in shown})


def _is_variable_rate(scan: _Scan | None, info: _VideoInfo | None) -> bool:
    """Frame intervals differ by more than 10% (and by more than time-base rounding)."""
    if scan is None or info is None:
        return False
    intervals = np.diff(np.unique(scan.times))
    if len(intervals) < 2:
        return False
    spread = float(intervals.max() - intervals.min())
    return spread > max(_VFR_TOLERANCE * float(np.median(intervals)), 1.5 * info.time_base)


class _FramePicker:
    """Streams decoded frames in presentation order and keeps the one shown at each grid time."""

    def __init__(
        self, grid_times: np.ndarray, info: _VideoInfo, config: DecodeConfig, on_frame: FrameCallback | None = None
    ) -> None:
        self._grid = grid_times
        self._on_frame = on_frame
        self._time_base = info.time_base
        self._k = 0
        self._sar = info.sar
        self._period = 1.0 / info.rate
        self._last_time = float(grid_times[0]) - self._period
        self._prev: av.VideoFrame | None = None
        self._prev_array: np.ndarray | None = None
        self._rotate_tag = info.rotate_tag
        self._config = config
        self._geometry: tuple[int, int, int] | None = None  # (coded-orientation width, height, quarter turns)
        self.rotation = 0
        self.display = (0, 0)
        self.picked: list[np.ndarray] = []

    def offer(self, frame: av.VideoFrame) -> None:
        if frame.is_corrupt:
            return
        # frame.time is unset on frames flushed out of the decoder; the stream time base is not
        t = frame.pts * self._time_base if frame.pts is not None else self._last_time + self._period
        self._last_time = t
        while self._k < len(self._grid) and self._grid[self._k] < t - _TIME_EPS:
            self._take(self._prev if self._prev is not None else frame)
        if self._prev is not frame:
            self._prev, self._prev_array = frame, None

    def finish(self) -> np.ndarray | None:
        """`(T, H, W, 3)` uint8, or None when no frame decoded."""
        if self._prev is None:
            return None
        while self._k < len(self._grid):
            self._take(self._prev)
        return np.stack(self.picked)

    def _take(self, frame: av.VideoFrame) -> None:
        if frame is self._prev and self._prev_array is not None:
            array = self._prev_array
        else:
            array = self._to_rgb(frame)
            if frame is self._prev:
                self._prev_array = array
        self.picked.append(array)
        if self._on_frame is not None:
            assert self._geometry is not None
            self._on_frame(self._k, array, _PictureSource(frame, self._geometry))
        self._k += 1

    def _to_rgb(self, frame: av.VideoFrame) -> np.ndarray:
        """Upright RGB `(H, W, 3)` at analysis size; geometry fixed by the first sampled frame."""
        if self._geometry is None:
            ccw = frame.rotation if frame.rotation else -self._rotate_tag
            quarter_turns = round(ccw / 90) % 4
            width, height = max(round(frame.width * self._sar), 1), frame.height
            if quarter_turns % 2:
                width, height = height, width
            self.display = (int(width), int(height))
            self.rotation = (-quarter_turns * 90) % 360  # clockwise, like the legacy `rotate` tag
            scale = min(1.0, self._config.max_side / max(width, height))
            out_w, out_h = max(round(width * scale), 1), max(round(height * scale), 1)
            if quarter_turns % 2:
                out_w, out_h = out_h, out_w
            self._geometry = (out_w, out_h, quarter_turns)
        out_w, out_h, quarter_turns = self._geometry
        # One swscale thread: the automatic count (2 here) gave the same pixels for 35 % more CPU per
        # frame and no faster a decode (FFmpeg's decoder threads already use the other core).
        if frame.format.name.startswith(_SCALE_IN_YUV) and (frame.width, frame.height) != (out_w, out_h):
            # Scale in the decoder's own YUV layout, then convert the small picture to RGB with the
            # source's colour matrix: 0.5-0.7 ms per 720p frame against 1.6 ms for one pass that
            # converts at full size. Chroma is then at the subsampled resolution (mean difference
            # ~0.8 of 255 on `video_720p`).
            frame = frame.reformat(width=out_w, height=out_h, interpolation="AREA", threads=1)
        rgb = frame.reformat(
            width=out_w, height=out_h, format="rgb24", interpolation="AREA", threads=1
        ).to_ndarray()  # (h, w, 3)
        return np.ascontiguousarray(np.rot90(rgb, k=quarter_turns)) if quarter_turns else rgb


# Pixel formats `_FramePicker._to_rgb` scales before converting: FFmpeg's planar and semi-planar YUV.
_SCALE_IN_YUV = ("yuv", "nv")
# Pixel formats `_PictureSource.view` crops in YUV; the others are converted to RGB whole first.
_CROP_IN_YUV = ("yuv420p", "yuvj420p")


class _PictureSource:
    """A sampled frame's decoded picture as a `media.faces.SourceFrame`: face detection and detail views at
    source resolution. Holding one keeps the decoder's picture alive; `EarlyDetections` lets it go once the
    frame's views are cut."""

    def __init__(self, frame: av.VideoFrame, geometry: tuple[int, int, int]) -> None:
        self._frame = frame
        self._out_w, self._out_h, self._turns = geometry  # analysis size in the coded orientation, quarter turns
        self._ax, self._ay = frame.width / self._out_w, frame.height / self._out_h  # coded px per analysis px
        self.upscale = min(self._ax, self._ay)
        self.nbytes = sum(plane.buffer_size for plane in frame.planes)
        self._array: ArraySource | None = None

    def grey(self, max_side: int) -> FaceView:
        scale = min(self.upscale, max_side / max(self._out_w, self._out_h))
        width, height = max(round(self._out_w * scale), 1), max(round(self._out_h * scale), 1)
        grey = self._frame.reformat(width=width, height=height, format="gray", interpolation="AREA", threads=1)
        sx, sy = width / self._out_w, height / self._out_h
        if self._turns % 2:
            sx, sy = sy, sx
        return FaceView(_upright(grey.to_ndarray(), self._turns), 0.0, 0.0, sx, sy)

    def view(self, box: np.ndarray, scale: float) -> FaceView:
        """Cuts the region out of the YUV planes and converts only that, with the analysis frames' colour
        conversion: for a 64 px face in a 1080p frame 0.15 ms and a 60 KB image, against 1.4 ms and 6 MB to
        convert the whole frame."""
        frame = self._frame
        upright_w, upright_h = (self._out_h, self._out_w) if self._turns % 2 else (self._out_w, self._out_h)
        x0, y0, x1, y1 = _unrotate_rect(_clip_rect(box, upright_w, upright_h), self._turns, self._out_w, self._out_h)
        # coded pixels: even starts for the half-size chroma, a height divisible by 4 for from_ndarray
        left, right = _aligned_span(x0 * self._ax, x1 * self._ax, 2, frame.width)
        top, bottom = _aligned_span(y0 * self._ay, y1 * self._ay, 4, frame.height)
        if frame.format.name not in _CROP_IN_YUV or right <= left or bottom <= top:
            return self._as_array().view(box, scale)
        planes = [_plane_array(plane) for plane in frame.planes[:3]]
        luma = planes[0][top:bottom, left:right]
        chroma = [plane[top // 2 : bottom // 2, left // 2 : right // 2] for plane in planes[1:]]
        packed = np.concatenate([luma.reshape(-1), *(c.reshape(-1) for c in chroma)])
        crop = av.VideoFrame.from_ndarray(packed.reshape(-1, right - left), format=frame.format.name)
        crop.colorspace, crop.color_range = frame.colorspace, frame.color_range
        width, height = (right - left) / self._ax, (bottom - top) / self._ay  # analysis px, coded orientation
        out_w, out_h = max(round(width * scale), 1), max(round(height * scale), 1)
        rgb = crop.reformat(width=out_w, height=out_h, format="rgb24", interpolation="AREA", threads=1).to_ndarray()
        ux0, uy0, ux1, uy1 = _rotate_rect(
            (left / self._ax, top / self._ay, right / self._ax, bottom / self._ay), self._turns, self._out_w, self._out_h
        )
        image = _upright(rgb, self._turns)
        return FaceView(image, ux0, uy0, image.shape[1] / (ux1 - ux0), image.shape[0] / (uy1 - uy0))

    def _as_array(self) -> ArraySource:
        """The whole picture in upright RGB at source resolution, for pixel formats with no cheaper path."""
        if self._array is None:
            rgb = _upright(self._frame.reformat(format="rgb24", threads=1).to_ndarray(), self._turns)
            upright = (self._out_h, self._out_w) if self._turns % 2 else (self._out_w, self._out_h)
            self._array = ArraySource(rgb, upright)
        return self._array


Rect = tuple[float, float, float, float]  # x0, y0, x1, y1: pixel edges


def _upright(image: np.ndarray, quarter_turns: int) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(image, k=quarter_turns)) if quarter_turns else image


def _clip_rect(box: np.ndarray, width: int, height: int) -> Rect:
    x0, y0, x1, y1 = (float(v) for v in box)
    return max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))


def _unrotate_rect(rect: Rect, quarter_turns: int, width: int, height: int) -> Rect:
    """`rect` in `np.rot90(picture, quarter_turns)` -> the same pixels in `picture` (`width` x `height`)."""
    x0, y0, x1, y1 = rect
    if quarter_turns == 1:
        return width - y1, x0, width - y0, x1
    if quarter_turns == 2:
        return width - x1, height - y1, width - x0, height - y0
    if quarter_turns == 3:
        return y0, height - x1, y1, height - x0
    return rect


def _rotate_rect(rect: Rect, quarter_turns: int, width: int, height: int) -> Rect:
    """`rect` in `picture` (`width` x `height`) -> the same pixels in `np.rot90(picture, quarter_turns)`."""
    x0, y0, x1, y1 = rect
    if quarter_turns == 1:
        return y0, width - x1, y1, width - x0
    if quarter_turns == 2:
        return width - x1, height - y1, width - x0, height - y0
    if quarter_turns == 3:
        return height - y1, x0, height - y0, x1
    return rect


def _aligned_span(start: float, end: float, multiple: int, limit: int) -> tuple[int, int]:
    """Whole pixels [a, b) covering [start, end) within [0, limit): `a` even, `b - a` a multiple of `multiple`."""
    a = max(int(start) // 2 * 2, 0)
    length = max(math.ceil((end - a) / multiple), 1) * multiple
    if a + length > limit:  # at the picture's far edge: start earlier rather than cut the region short
        a = max((limit - length) // 2 * 2, 0)
        length = min(length, (limit - a) // multiple * multiple)
    return a, a + length


def _plane_array(plane: av.video.plane.VideoPlane) -> np.ndarray:
    """A plane's pixels `(h, w)` without its line padding; a view of the decoder's buffer."""
    return np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]


def _decode_streams(
    data: bytes,
    info: _VideoInfo | None,
    audio_index: int | None,
    scan: _Scan | None,
    grid: _Grid | None,
    config: DecodeConfig,
    budget: _Budget,
    on_frame: FrameCallback | None = None,
) -> tuple[np.ndarray | None, np.ndarray, int, tuple[int, int]]:
    """One demux pass decoding the needed video GOPs and all audio.

    Returns sampled frames `(T, H, W, 3)` (None if none decoded), audio `(N,)`, the rotation
    applied and the upright display size.
    """
    picker = None
    if info is not None and grid is not None:
        picker = _FramePicker(grid.times, info, config, on_frame)
    with _open(data, config) as container:
        by_index = {stream.index: stream for stream in container.streams}
        video = by_index[info.index] if info is not None else None
        audio = by_index[audio_index] if audio_index is not None else None
        audio_out = _AudioCollector(float(audio.time_base) if audio is not None and audio.time_base else 0.0, config)
        if video is not None:
            video.thread_type = "AUTO" if config.frame_threads else "SLICE"
            if config.threads:
                video.codec_context.thread_count = config.threads
        packet_no = -1
        if scan is not None and grid is not None and picker is not None:
            budget.plan(int(np.isin(scan.gops, np.fromiter(grid.needed_gops, np.int64)).sum()))
        try:
            for packet in container.demux([s for s in (video, audio) if s is not None]):
                budget.packet()
                if packet.size == 0:
                    continue
                if packet.stream is video and picker is not None:
                    packet_no += 1
                    if scan is not None and grid is not None and packet_no < len(scan.gops):
                        if int(scan.gops[packet_no]) not in grid.needed_gops:
                            continue  # no sampled frame in this group of pictures
                        # a non-reference picture that is not sampled can be skipped outright
                        video.codec_context.skip_frame = "DEFAULT" if packet_no in grid.shown_packets else "NONREF"
                    for frame in _safe_decode(video, packet):
                        budget.frame(frame)
                        picker.offer(frame)
                    budget.fed_video()
                elif packet.stream is audio:
                    for frame in _safe_decode(audio, packet):
                        audio_out.add(frame)
        except av.error.FFmpegError:
            pass  # truncated or corrupt tail: keep what decoded
        if video is not None and picker is not None:
            video.codec_context.skip_frame = "DEFAULT"
            for frame in _safe_decode(video, None):
                budget.frame(frame)
                picker.offer(frame)
        if audio is not None:
            for frame in _safe_decode(audio, None):
                audio_out.add(frame)
    frames = picker.finish() if picker is not None else None
    samples = audio_out.finish(float(grid.times[0]) if grid is not None else None)
    if picker is None:
        return frames, samples, 0, (0, 0)
    return frames, samples, picker.rotation, picker.display


def _safe_decode(stream: av.stream.Stream, packet: av.Packet | None) -> list:
    """Frames from one packet (None flushes); a packet the decoder rejects yields none."""
    try:
        return stream.decode(packet)
    except (av.error.FFmpegError, EOFError):
        return []


class _AudioCollector:
    """Resamples decoded audio to 16 kHz mono float32 as it arrives."""

    def __init__(self, time_base: float, config: DecodeConfig) -> None:
        self._time_base = time_base
        self._resampler: av.AudioResampler | None = None
        self._chunks: list[np.ndarray] = []
        self._n = 0
        self._limit = int((config.max_duration_s + 1.0) * AUDIO_SAMPLE_RATE)
        self._max_duration_s = config.max_duration_s
        self.start: float | None = None  # stream time of the first decoded sample, seconds

    def add(self, frame: av.AudioFrame) -> None:
        if self.start is None and frame.pts is not None and self._time_base:
            self.start = frame.pts * self._time_base
        if self._resampler is None:
            self._resampler = _mono_resampler()
        try:
            out = self._resampler.resample(frame)
        except ValueError:  # sample format or layout changed mid-stream: start a new resampler
            self._drain()
            self._resampler = _mono_resampler()
            out = self._resampler.resample(frame)
        self._keep(out)

    def finish(self, video_start: float | None) -> np.ndarray:
        """All audio `(N,)`; with `video_start`, shifted so sample 0 is at the first video frame."""
        self._drain()
        samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)  # (N,)
        if not np.isfinite(samples).all():  # a corrupt float stream: NaN/inf would poison every model downstream
            samples = np.nan_to_num(samples, nan=0.0, posinf=0.0, neginf=0.0)
        if video_start is not None and self.start is not None and len(samples):
            shift = round((self.start - video_start) * AUDIO_SAMPLE_RATE)
            if shift > 0:
                samples = np.concatenate([np.zeros(min(shift, self._limit), np.float32), samples])
            elif shift < 0:
                samples = samples[-shift:]
        return np.ascontiguousarray(samples, dtype=np.float32)

    def _drain(self) -> None:
        if self._resampler is not None:
            self._keep(self._resampler.resample(None))
            self._resampler = None

    def _keep(self, frames: list[av.AudioFrame]) -> None:
        for frame in frames:
            chunk = frame.to_ndarray().reshape(-1)  # packed mono: (1, n) -> (n,)
            self._chunks.append(chunk)
            self._n += len(chunk)
        if self._n > self._limit:
            raise MediaTooLargeError(f"audio lasts more than {self._max_duration_s:g} s")


def _mono_resampler() -> av.AudioResampler:
    return av.AudioResampler(format="flt", layout="mono", rate=AUDIO_SAMPLE_RATE)


def _container_name(fmt: str, metadata: dict[str, str], head: bytes) -> str:
    """A user-facing container name: FFmpeg's demuxer names lump mp4/mov and mkv/webm together."""
    if fmt.startswith("mov,mp4"):
        brand = metadata.get("major_brand", "").strip().lower()
        if brand == "qt":
            return "mov"
        if brand.startswith(("m4a", "m4b")):
            return "m4a"
        if brand.startswith("3g"):
            return "3gp"
        if brand in _HEIF_BRANDS:
            return "avif" if brand.startswith("avi") else "heif"  # what libheif could not decode
        return "mp4"
    if fmt.startswith("matroska"):
        return "webm" if b"webm" in head else "matroska"
    return fmt


def _still_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a `_STILL_MAGIC` still's header, decoding no pixels; None if it is not one."""
    if not data.startswith(_STILL_MAGIC):
        return None
    try:
        with PIL.Image.open(io.BytesIO(data)) as header:
            return header.size
    except PIL.Image.DecompressionBombError as exc:  # Pillow's own refusal: over ~179 Mpixels
        raise MediaTooLargeError(f"image too large: {exc}") from exc
    except (PIL.UnidentifiedImageError, OSError, ValueError):
        return None


def _decode_with_opencv(data: bytes, config: DecodeConfig, on_frame: FrameCallback | None = None) -> _Decoded | None:
    """Still images FFmpeg cannot demux; OpenCV applies EXIF orientation itself. None if not an image.

    Only the still formats of `_STILL_MAGIC`, and only once their header's size is within `max_pixels`."""
    size = _still_size(data)
    if size is None:
        return None
    width, height = size
    if height * width > config.max_pixels:
        raise MediaTooLargeError(f"image size {width}x{height} exceeds {config.max_pixels} pixels")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        return None
    height, width = bgr.shape[:2]
    if height * width > config.max_pixels:
        raise MediaTooLargeError(f"image size {width}x{height} exceeds {config.max_pixels} pixels")
    return _still(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), "opencv", len(data), config, on_frame)


def _still(
    rgb: np.ndarray, container: str, size_bytes: int, config: DecodeConfig, on_frame: FrameCallback | None
) -> _Decoded:
    """A decoded upright RGB still (H, W, 3) as a one-frame image, scaled to `max_side` like sampled frames."""
    height, width = rgb.shape[:2]
    scale = min(1.0, config.max_side / max(height, width))
    frame = rgb
    if scale < 1.0:
        size = (max(round(width * scale), 1), max(round(height * scale), 1))
        frame = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    frames = np.ascontiguousarray(frame)[None]  # (1, H, W, 3)
    if on_frame is not None:
        on_frame(0, frames[0], ArraySource(np.ascontiguousarray(rgb), (frames.shape[2], frames.shape[1])))
    meta = ClipMeta(
        kind="image",
        duration_s=0.0,
        native_fps=None,
        width=width,
        height=height,
        rotation=0,
        has_audio=False,
        has_video=True,
        face_coverage=0.0,
        container=container,
        n_frames=1,
        size_bytes=size_bytes,
    )
    return _Decoded(meta, frames, np.zeros(1, np.float64), np.zeros(0, np.float32))


def _is_heif(data: bytes) -> bool:
    """The upload opens with an `ftyp` box whose major brand is a HEIF/AVIF one."""
    return data[4:8] == b"ftyp" and data[8:12].decode("latin-1").strip() in _HEIF_BRANDS


def _decode_with_libheif(data: bytes, config: DecodeConfig, on_frame: FrameCallback | None = None) -> _Decoded | None:
    """A HEIF upload's primary image through libheif (pillow-heif): grids joined and rotations applied.

    None when libheif cannot decode it (AVIF here, a broken file): FFmpeg then tries, and refuses what
    it cannot read. The size is checked from the header before any pixel is decoded."""
    import pillow_heif  # noqa: PLC0415 (only HEIF uploads need it)

    if not pillow_heif.is_supported(data):
        return None
    try:
        image = pillow_heif.open_heif(data, convert_hdr_to_8bit=True)
        width, height = image.size
        if height * width > config.max_pixels:
            raise MediaTooLargeError(f"image size {width}x{height} exceeds {config.max_pixels} pixels")
        picture = image.to_pillow()
        rgb = np.asarray(picture if picture.mode == "RGB" else picture.convert("RGB"))
    except (ValueError, RuntimeError, OSError):
        return None  # e.g. AVIF, whose AV1 pictures this libheif cannot decode: FFmpeg's turn
    return _still(rgb, "heif", len(data), config, on_frame)
