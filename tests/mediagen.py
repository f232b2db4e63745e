"""Build test media in memory with PyAV, so no test depends on a file outside the repo.

Every encoder returns the file's bytes exactly as an upload would carry them. Frames are
RGB uint8 arrays `(H, W, 3)`; audio is float32 in [-1, 1], mono `(N,)` or multichannel
`(N, C)`. Other suites (Serve tests, the benchmark generator) import these helpers, so the
signatures stay small and the defaults produce something every decoder accepts.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable, Iterator
from fractions import Fraction

import av
import cv2
import numpy as np
from skimage.data import astronaut

# Audio codec each container gets when `audio_codec` is not given.
DEFAULT_AUDIO_CODEC = {
    "mp4": "aac",
    "mov": "aac",
    "matroska": "libopus",
    "webm": "libopus",
    "avi": "pcm_s16le",
}

# encoder and pixel format for each still-image format we produce.
_IMAGE_CODECS = {
    "jpeg": ("mjpeg", "yuvj420p"),
    "png": ("png", "rgb24"),
    "webp": ("libwebp", "yuv420p"),
    "bmp": ("bmp", "bgr24"),
    "tiff": ("tiff", "rgb24"),
}

# EXIF orientation tag value for a clockwise display rotation.
_EXIF_ORIENTATION = {90: 6, 180: 3, 270: 8}

# muxer and audio encoder for each audio-file format we produce.
_AUDIO_FORMATS = {
    "wav": ("wav", "pcm_s16le"),
    "flac": ("flac", "flac"),
    "mp3": ("mp3", "libmp3lame"),
    "ogg": ("ogg", "libopus"),
    "m4a": ("ipod", "aac"),
}

# Encoder options for near-lossless, fast, quiet encodes; other codecs get a high bit rate.
_QUALITY_OPTIONS = {
    "libx264": {"crf": "16", "preset": "veryfast"},
    "libx265": {"crf": "16", "preset": "veryfast", "x265-params": "log-level=error"},
    "libvpx-vp9": {"crf": "20", "b": "0", "deadline": "realtime", "cpu-used": "8"},
    "libvpx": {"crf": "8", "b": "4M", "deadline": "realtime", "cpu-used": "8"},
}

# Start of each frame within a 4-frame VFR cycle, in frame periods (intervals 0.5, 0.5, 1, 2).
_VFR_CYCLE_START = np.array([0.0, 0.5, 1.0, 2.0])

# Sample rates libopus accepts; other rates are resampled to 48 kHz before encoding.
_OPUS_RATES = (8000, 12000, 16000, 24000, 48000)

# The astronaut photo's face: crop window (x0, y0, x1, y1) that frames head and shoulders,
# and the mouth centre / width in photo pixels (from dlib's 68-point model on the photo).
_ASTRONAUT_CROP = (102, 40, 342, 220)
_ASTRONAUT_MOUTH = (223.0, 147.0)
_ASTRONAUT_MOUTH_WIDTH = 44.0
# Her face as dlib's HOG detector boxes it in the photo (x0, y0, x1, y1): brows to chin, 91 px.
_ASTRONAUT_FACE = (175, 76, 266, 167)


def numbered_frames(n_frames: int, size: tuple[int, int] = (64, 48)) -> np.ndarray:
    """Frames `(T, H, W, 3)` whose top half shows the frame number in binary, one bit per block.

    The blocks are black or white and at least 8x8 pixels, so the number survives lossy
    codecs and chroma subsampling; `read_frame_numbers` recovers it. `size` is (width,
    height); width / 8 bits are available (64 px: numbers up to 255).
    """
    width, height = size
    bits = width // 8
    frames = np.full((n_frames, height, width, 3), 128, np.uint8)
    for i in range(n_frames):
        for b in range(bits):
            frames[i, : height // 2, b * 8 : (b + 1) * 8] = 235 if (i >> b) & 1 else 16
    return frames


def read_frame_numbers(frames: np.ndarray) -> np.ndarray:
    """Frame numbers `(T,)` drawn by `numbered_frames` (frames must be upright, original size)."""
    n_frames, height, width = frames.shape[:3]
    gray = frames[:, 2 : height // 2 - 2].astype(np.float64).mean(axis=(1, 3))  # (T, W)
    numbers = np.zeros(n_frames, np.int64)
    for b in range(width // 8):
        numbers |= (gray[:, b * 8 + 2 : b * 8 + 6].mean(axis=1) > 128).astype(np.int64) << b
    return numbers


def vfr_timestamps(n_frames: int, fps: float) -> np.ndarray:
    """Presentation times (s) `encode_video(vfr=True)` gives its frames.

    Intervals cycle through 0.5, 0.5, 1.0, 2.0 frame periods: the mean rate is still `fps`,
    but there are bursts (several frames per 10 fps grid step) and gaps (a frame held over
    two grid points), which is what a fixed-grid sampler has to get right.
    """
    index = np.arange(n_frames)
    return ((index // 4) * 4.0 + _VFR_CYCLE_START[index % 4]) / fps  # (n_frames,)


def encode_video(
    frames: Iterable[np.ndarray],
    container: str = "mp4",
    codec: str = "libx264",
    fps: float = 25.0,
    audio: np.ndarray | None = None,
    rotation: int = 0,
    vfr: bool = False,
    audio_rate: int = 16_000,
    audio_codec: str | None = None,
    keyframe_interval: int | None = None,
    audio_delay_s: float = 0.0,
    encoder_options: dict[str, str] | None = None,
) -> bytes:
    """Encode RGB frames (and optionally audio) into a container, in memory.

    frames: an array `(T, H, W, 3)` or any iterable of `(H, W, 3)` uint8 RGB frames (a
        generator works, so long clips need not sit in memory); H and W should be even.
    container: an FFmpeg muxer name: "mp4", "mov", "matroska", "webm", "avi", ...
    audio: float32 `(N,)` or `(N, C)` at `audio_rate`, muxed as a second stream.
    rotation: simulate a phone recording. `rotation` is the clockwise turn a player must
        apply to the stored picture (the legacy `rotate` tag; an iPhone portrait video has
        90): each upright frame is stored turned `rotation` degrees counter-clockwise, and
        the stream gets the matching display matrix, so a correct decoder shows the given
        frames again. The coded picture is W x H for 90 and 270.
    vfr: give frames the irregular times of `vfr_timestamps` instead of `i / fps`.
    audio_codec: defaults to the container's usual one (`DEFAULT_AUDIO_CODEC`).
    keyframe_interval: maximum frames between keyframes (the encoder's default otherwise).
    audio_delay_s: the audio stream starts this long after the first video frame.
    encoder_options: FFmpeg options for the video encoder, over our quality defaults
        (e.g. {"x265-params": "open-gop=1"}).
    """
    if rotation % 90:
        raise ValueError(f"rotation must be a multiple of 90, got {rotation}")
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        rate = Fraction(fps).limit_denominator(1001)
        video = out.add_stream(codec, rate=rate)
        video.pix_fmt = _pix_fmt_for(codec)
        video.options = {**_QUALITY_OPTIONS.get(codec, {}), **(encoder_options or {})}
        if codec not in _QUALITY_OPTIONS:
            video.bit_rate = 8_000_000
        if vfr:
            video.codec_context.time_base = Fraction(1, 1000)
        if keyframe_interval is not None:
            video.codec_context.gop_size = keyframe_interval
        if rotation % 360:
            video.set_display_rotation(-(rotation % 360))  # PyAV takes counter-clockwise degrees
        audio_codec = audio_codec or DEFAULT_AUDIO_CODEC.get(container, "aac")
        audio_stream = _add_audio_stream(out, audio, audio_rate, audio_codec)
        packets: list[av.Packet] = []
        for i, rgb in enumerate(frames):
            coded = np.ascontiguousarray(np.rot90(rgb, k=rotation // 90))  # (H', W', 3)
            if i == 0:
                video.width, video.height = coded.shape[1], coded.shape[0]
            frame = av.VideoFrame.from_ndarray(coded, format="rgb24")
            if vfr:
                frame.pts = int(round(vfr_timestamps(i + 1, fps)[i] * 1000))
                frame.time_base = Fraction(1, 1000)
            packets.extend(video.encode(frame))
        packets.extend(video.encode())
        if audio_stream is not None and audio is not None:
            packets.extend(_encode_audio_packets(audio_stream, audio, audio_rate, audio_delay_s))
        # mux in time order: some muxers (AVI) misplace streams written one after the other
        packets.sort(key=lambda p: float((p.dts if p.dts is not None else 0) * p.time_base))
        for packet in packets:
            out.mux(packet)
    return buf.getvalue()


def encode_image(rgb: np.ndarray, fmt: str = "jpeg", rotation: int = 0) -> bytes:
    """Encode one RGB image `(H, W, 3)` as a still-image file: jpeg, png, webp, bmp or tiff.

    rotation (jpeg only): simulate a phone photo, as `encode_video` does: the picture is
    stored turned `rotation` degrees counter-clockwise with the EXIF orientation tag that
    tells viewers to turn it back clockwise.
    """
    if fmt not in _IMAGE_CODECS:
        raise ValueError(f"unknown image format {fmt!r}; known: {sorted(_IMAGE_CODECS)}")
    if rotation % 360 and (fmt != "jpeg" or rotation % 90):
        raise ValueError("rotation needs fmt='jpeg' and a multiple of 90 degrees")
    codec, pix_fmt = _IMAGE_CODECS[fmt]
    stored = np.ascontiguousarray(np.rot90(rgb, k=(rotation % 360) // 90))  # (H', W', 3)
    ctx = av.CodecContext.create(codec, "w")
    ctx.width, ctx.height = stored.shape[1], stored.shape[0]
    ctx.pix_fmt = pix_fmt
    ctx.time_base = Fraction(1, 1)
    frame = av.VideoFrame.from_ndarray(stored, format="rgb24").reformat(format=pix_fmt)
    data = b"".join(bytes(p) for p in ctx.encode(frame) + ctx.encode(None))
    if rotation % 360:
        data = _with_exif_orientation(data, _EXIF_ORIENTATION[rotation % 360])
    return data


def encode_audio(samples: np.ndarray, sr: int = 16_000, fmt: str = "wav", cover_art: np.ndarray | None = None) -> bytes:
    """Encode float32 audio `(N,)` or `(N, C)` as an audio-only file: wav, flac, mp3, ogg (Opus) or m4a (AAC).

    cover_art (mp3 only): an RGB picture `(H, W, 3)` stored as an attached picture, the way
    music and podcast files carry album art; it must not turn the file into a video.
    """
    if fmt not in _AUDIO_FORMATS:
        raise ValueError(f"unknown audio format {fmt!r}; known: {sorted(_AUDIO_FORMATS)}")
    if cover_art is not None and fmt != "mp3":
        raise ValueError("cover_art is only supported for mp3")
    container, codec = _AUDIO_FORMATS[fmt]
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = _add_audio_stream(out, samples, sr, codec)
        assert stream is not None
        if cover_art is not None:
            picture = out.add_stream("mjpeg")
            picture.width, picture.height, picture.pix_fmt = cover_art.shape[1], cover_art.shape[0], "yuvj420p"
            picture.disposition = av.stream.Disposition.attached_pic
            out.start_encoding()
            packet = av.Packet(encode_image(cover_art, "jpeg"))
            packet.stream, packet.pts, packet.dts, packet.time_base = picture, 0, 0, Fraction(1, 90_000)
            out.mux(packet)
        for packet in _encode_audio_packets(stream, samples, sr, 0.0):
            out.mux(packet)
    return buf.getvalue()


def speech_like_audio(seconds: float, sr: int = 16_000, seed: int = 0) -> np.ndarray:
    """Mono float32 `(N,)` that has speech's structure without needing a recording.

    Syllables of 120-280 ms: a glottal pulse train whose pitch glides around 110-220 Hz,
    shaped by three vowel formants (applied in the frequency domain) and a rise/decay
    envelope, grouped into words separated by 150-400 ms pauses. Good enough for energy,
    pitch and envelope features and for driving a mouth animation; not intelligible.
    """
    rng = np.random.default_rng(seed)
    n_total = int(round(seconds * sr))
    out = np.zeros(n_total, np.float64)
    vowels = np.array(  # F1-F3 of /a/, /i/, /e/, /o/, /u/, Hz
        [[730, 1090, 2440], [270, 2290, 3010], [530, 1840, 2480], [570, 840, 2410], [300, 870, 2240]], float
    )
    t = int(rng.uniform(0.05, 0.2) * sr)
    while t < n_total:
        for _ in range(int(rng.integers(1, 5))):  # syllables in this word
            n = int(rng.uniform(0.12, 0.28) * sr)
            if t + n > n_total:
                break
            f0 = rng.uniform(110, 220) * (1 + 0.15 * np.linspace(-1, 1, n) * rng.choice([-1, 1]))
            phase = np.cumsum(f0 / sr)
            source = (phase % 1.0) ** 3 - 0.25  # skewed sawtooth ~ glottal pulses
            spectrum = np.fft.rfft(source)
            freqs = np.fft.rfftfreq(n, 1 / sr)
            formants = vowels[rng.integers(len(vowels))]
            gain = sum(np.exp(-0.5 * ((freqs - f) / (60 + 0.05 * f)) ** 2) / (1 + j) for j, f in enumerate(formants))
            voiced = np.fft.irfft(spectrum * (gain + 0.02), n)
            env = np.sin(np.linspace(0, np.pi, n)) ** 0.7
            out[t : t + n] += voiced / (np.abs(voiced).max() + 1e-9) * env * rng.uniform(0.5, 1.0)
            t += n
        t += int(rng.uniform(0.15, 0.4) * sr)  # pause between words
    out += 0.003 * rng.standard_normal(n_total)
    return (0.8 * out / (np.abs(out).max() + 1e-9)).astype(np.float32)


def audio_envelope(audio: np.ndarray, sr: int, fps: float, n_frames: int) -> np.ndarray:
    """Per-video-frame loudness in [0, 1] `(n_frames,)`: RMS over each frame's window, peak-normalised."""
    hop = sr / fps
    env = np.zeros(n_frames, np.float64)
    for i in range(n_frames):
        seg = audio[int(i * hop) : int((i + 1) * hop)]
        env[i] = np.sqrt(np.mean(seg.astype(np.float64) ** 2)) if len(seg) else 0.0
    return env / (env.max() + 1e-9)


def talking_face_frames(mouth_open: np.ndarray, size: tuple[int, int] = (320, 240), seed: int = 0) -> np.ndarray:
    """`(T, H, W, 3)` uint8 RGB: `iter_talking_face_frames` collected into one array."""
    return np.stack(list(iter_talking_face_frames(mouth_open, size, seed)))


def iter_talking_face_frames(
    mouth_open: np.ndarray, size: tuple[int, int] = (320, 240), seed: int = 0
) -> Iterator[np.ndarray]:
    """Animate the astronaut photo: one `(H, W, 3)` frame per entry of `mouth_open` (0 closed .. 1 open).

    The lower lip and chin are pushed down by a smooth displacement field and a dark
    mouth cavity fills the gap, so dlib's lip landmarks really move; a slow random-walk
    camera shift and zoom keeps optical flow non-trivial. A generator, so long or large
    clips are encoded without holding every frame in memory. `size` is (width, height).
    """
    width, height = size
    rng = np.random.default_rng(seed)
    x0, y0, x1, y1 = _ASTRONAUT_CROP
    scale = min(width / (x1 - x0), height / (y1 - y0))
    margin = 48  # room for camera drift and zoom without hitting the photo border
    ox, oy = max(x0 - margin, 0), max(y0 - margin, 0)
    photo = np.ascontiguousarray(astronaut()[oy : y1 + margin, ox : x1 + margin])  # (h, w, 3) around the face
    mx, my = _ASTRONAUT_MOUTH[0] - ox, _ASTRONAUT_MOUTH[1] - oy
    yy, xx = np.mgrid[0 : photo.shape[0], 0 : photo.shape[1]].astype(np.float32)
    half_w = _ASTRONAUT_MOUTH_WIDTH / 2
    # weight of the downward push: 1 on the lower lip and chin, 0 above the lip line
    below = np.clip((yy - (my - 1)) / 3.0, 0, 1)
    lateral = np.exp(-0.5 * ((xx - mx) / (1.3 * half_w)) ** 2)
    fade = np.exp(-0.5 * (np.clip(yy - my - 25, 0, None) / 20.0) ** 2)
    push = (below * lateral * fade).astype(np.float32)  # (h, w)
    centre = np.array([(x0 + x1) / 2 - ox, (y0 + y1) / 2 - oy])
    drift = np.cumsum(rng.normal(0, 0.6, (len(mouth_open), 2)), axis=0)
    drift -= drift.mean(axis=0)
    for i, amount in enumerate(np.clip(mouth_open, 0, 1)):
        gap = float(9.0 * amount)  # mouth opening in photo pixels
        face = cv2.remap(photo, xx, yy - np.float32(gap) * push, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        if gap > 0.5:
            cavity = np.zeros(photo.shape[:2], np.uint8)
            axes = (int(half_w * 0.8), max(int(gap / 2), 1))
            cv2.ellipse(cavity, (int(mx), int(my + gap / 2)), axes, 0, 0, 360, 255, -1)
            alpha = cv2.GaussianBlur(cavity, (5, 5), 0)[..., None] / 255.0 * 0.85
            face = (face * (1 - alpha) + np.array([60, 20, 25]) * alpha).astype(np.uint8)
        zoom = scale * (1 + 0.02 * np.sin(i / 9.0))
        cx, cy = centre + drift[i]
        affine = np.array([[zoom, 0, width / 2 - zoom * cx], [0, zoom, height / 2 - zoom * cy]], np.float32)
        yield cv2.warpAffine(face, affine, (width, height), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)


def face_in_scene_frames(
    n_frames: int,
    size: tuple[int, int] = (1280, 720),
    face_height: float = 64,
    centre: tuple[float, float] = (0.5, 0.5),
    roll: float = 0.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """A talking head framed wide: frames `(T, H, W, 3)` and the face's box in each `(T, 4)` x0, y0, x1, y1.

    The astronaut's head as `iter_talking_face_frames` animates it (mouth moving, camera drifting),
    scaled so that her face (`_ASTRONAUT_FACE`, brows to chin) is `face_height` px tall, turned
    `roll` degrees in the image plane (counter-clockwise), and blended into the coffee photo with
    its face centred at `centre` (fractions of width and height; clamped so the face stays 2 px
    inside the frame). `size` is (width, height). The box is the turned face box's bounding box.
    """
    from skimage.data import coffee

    width, height = size
    x0, y0, x1, y1 = _ASTRONAUT_FACE
    cx0, cy0, cx1, cy1 = _ASTRONAUT_CROP
    head_scale = face_height / (y1 - y0)
    head_w, head_h = max(round((cx1 - cx0) * head_scale), 2), max(round((cy1 - cy0) * head_scale), 2)
    render_scale = min(head_w / (cx1 - cx0), head_h / (cy1 - cy0))  # what iter_talking_face_frames uses
    face_centre = np.array([((x0 + x1) / 2 - (cx0 + cx1) / 2), ((y0 + y1) / 2 - (cy0 + cy1) / 2)]) * render_scale
    face_centre += (head_w / 2, head_h / 2)  # in the rendered head
    half = np.array([(x1 - x0), (y1 - y0)]) * render_scale / 2
    corners = np.array([[-1, -1], [1, -1], [-1, 1], [1, 1]]) * half  # (4, 2) around the face centre
    theta = np.radians(roll)
    turn = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])  # counter-clockwise on screen
    reach = np.abs(corners @ turn.T).max(axis=0)  # half extent of the turned box
    target = np.clip(np.array(centre) * (width, height), reach + 2, np.array([width, height]) - reach - 2)
    warp = cv2.getRotationMatrix2D((float(face_centre[0]), float(face_centre[1])), roll, 1.0)
    warp[:, 2] += target - face_centre
    alpha = np.zeros((head_h, head_w), np.float32)
    cv2.ellipse(alpha, (head_w // 2, head_h // 2), (int(head_w * 0.40), int(head_h * 0.44)), 0, 0, 360, 1.0, -1)
    alpha = cv2.GaussianBlur(alpha, (0, 0), max(head_h * 0.04, 0.5))
    alpha = cv2.warpAffine(alpha, warp, (width, height), flags=cv2.INTER_LINEAR)[..., None]  # (H, W, 1)
    background = cv2.resize(coffee(), (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)
    mouth = np.clip(np.sin(np.arange(n_frames) * 0.8), 0, 1)
    frames = np.empty((n_frames, height, width, 3), np.uint8)
    for i, head in enumerate(iter_talking_face_frames(mouth, (head_w, head_h), seed)):
        placed = cv2.warpAffine(head, warp, (width, height), flags=cv2.INTER_LINEAR)
        frames[i] = (background * (1 - alpha) + placed * alpha).astype(np.uint8)
    turned = corners @ turn.T + target  # (4, 2)
    box = np.concatenate([turned.min(axis=0), turned.max(axis=0)]).astype(np.float32)
    return frames, np.tile(box, (n_frames, 1))


def talking_face_video(
    seconds: float = 2.0,
    size: tuple[int, int] = (320, 240),
    fps: float = 25.0,
    container: str = "mp4",
    with_audio: bool = True,
    seed: int = 0,
    lip_delay_s: float = 0.0,
    encoder_options: dict[str, str] | None = None,
) -> bytes:
    """A clip of the astronaut's face talking: mouth opening follows the speech envelope.

    `size` is (width, height). The codec is chosen for the container (H.264 except VP9 in
    webm); audio is `speech_like_audio(seconds, 16000, seed)`, and frame i opens the mouth
    by `talking_face_mouth(...)[i]`, so lips and audio are in sync by construction, a
    positive for AV-alignment. `lip_delay_s` > 0 makes the lips lag the sound (a negative).
    `encoder_options` go to `encode_video`.
    """
    n = int(round(seconds * fps))
    audio = speech_like_audio(seconds, 16_000, seed)
    mouth = talking_face_mouth(audio, 16_000, fps, n, lip_delay_s)
    codec = "libvpx-vp9" if container == "webm" else "libx264"
    frames = iter_talking_face_frames(mouth, size, seed)
    return encode_video(frames, container, codec, fps, audio if with_audio else None, encoder_options=encoder_options)


def talking_face_mouth(audio: np.ndarray, sr: int, fps: float, n_frames: int, lip_delay_s: float = 0.0) -> np.ndarray:
    """Mouth opening in [0, 1] per video frame `(n_frames,)` that `talking_face_video` animates."""
    shift = int(round(lip_delay_s * sr))
    if shift > 0:
        audio = np.concatenate([np.zeros(shift, audio.dtype), audio])
    elif shift < 0:
        audio = np.concatenate([audio[-shift:], np.zeros(-shift, audio.dtype)])
    return audio_envelope(audio, sr, fps, n_frames) ** 0.7


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Insert a minimal EXIF APP1 segment holding only the orientation tag (0x0112) after SOI."""
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    app1 = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


def _add_audio_stream(
    out: av.container.OutputContainer, audio: np.ndarray | None, rate: int, codec: str
) -> av.audio.stream.AudioStream | None:
    """Add an audio stream whose layout matches `audio`; None when there is no audio."""
    if audio is None:
        return None
    channels = 1 if audio.ndim == 1 else audio.shape[1]
    if codec in ("libopus", "opus") and rate not in _OPUS_RATES:
        rate = 48_000
    stream = out.add_stream(codec, rate=rate)
    stream.layout = "mono" if channels == 1 else "stereo" if channels == 2 else f"{channels}c"
    return stream


def _encode_audio_packets(
    stream: av.audio.stream.AudioStream, audio: np.ndarray, rate: int, delay_s: float
) -> list[av.Packet]:
    """Encode all of `audio` (`(N,)` or `(N, C)` at `rate`) starting at `delay_s`; PyAV resamples and re-frames it."""
    planar = np.ascontiguousarray(np.atleast_2d(audio.astype(np.float32).T))  # (C, N)
    packets: list[av.Packet] = []
    chunk = 4096
    offset = int(round(delay_s * rate))
    for start in range(0, planar.shape[1], chunk):
        piece = np.ascontiguousarray(planar[:, start : start + chunk])  # (C, n)
        frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout=stream.layout.name)
        frame.sample_rate = rate
        frame.pts = offset + start
        frame.time_base = Fraction(1, rate)
        packets.extend(stream.encode(frame))
    packets.extend(stream.encode())
    return packets


def _pix_fmt_for(codec: str) -> str:
    """yuv420p where the encoder takes it (what players expect), else its first supported format."""
    formats = [f.name for f in (av.Codec(codec, "w").video_formats or [])]
    if not formats or "yuv420p" in formats:
        return "yuv420p"
    return "yuvj420p" if "yuvj420p" in formats else formats[0]


def decode_bomb(n_frames: int = 1500, fps: float = 1000.0, size: tuple[int, int] = (16, 16)) -> bytes:
    """The CPU bomb of the hostile campaign, small: tiny frames (or `size`) at 1000 fps in one group of pictures."""
    return encode_video(numbered_frames(n_frames, size=size), fps=fps, keyframe_interval=10**6,
                        encoder_options={"preset": "ultrafast"})


def huge_png(side: int = 16_000) -> bytes:
    """A 1-bit PNG that is a few KB on the wire and `side`² pixels decoded."""
    import PIL.Image

    buf = io.BytesIO()
    PIL.Image.new("1", (side, side)).save(buf, format="PNG")
    return buf.getvalue()


def _hostile_seeds() -> dict[str, bytes]:
    rgb = np.full((72, 96, 3), (120, 90, 60), np.uint8)
    audio = speech_like_audio(1.0)
    return {
        "mp4": encode_video(numbered_frames(10, size=(96, 72)), fps=10, audio=audio),
        "webm": encode_video(numbered_frames(10, size=(96, 72)), container="webm", codec="libvpx-vp9", fps=10),
        "png": encode_image(rgb, "png"),
        "jpeg": encode_image(rgb, "jpeg"),
        "wav": encode_audio(audio),
        "mp3": encode_audio(audio, fmt="mp3"),
    }


def hostile_corpus(seed: int = 0) -> list[tuple[str, bytes]]:
    """(kind, upload bytes): 1,000 seeded mutated or junk uploads (truncated, bit-flipped, corrupted header,
    polyglot, random, text): the hostile-input campaign of tests/serve/test_hostile.py and bench.edge_campaign."""
    rng = np.random.default_rng(seed)
    seeds = _hostile_seeds()
    names = sorted(seeds)
    corpus: list[tuple[str, bytes]] = []
    for _ in range(250):  # truncated anywhere
        data = seeds[names[rng.integers(len(names))]]
        corpus.append(("truncated", data[: int(rng.integers(0, len(data)))]))
    for _ in range(300):  # a few bytes flipped
        data = bytearray(seeds[names[rng.integers(len(names))]])
        for at in rng.integers(0, len(data), size=int(rng.integers(1, 40))):
            data[at] ^= 1 << int(rng.integers(8))
        corpus.append(("bit_flipped", bytes(data)))
    for _ in range(120):  # the header replaced by noise
        data = bytearray(seeds[names[rng.integers(len(names))]])
        n = int(rng.integers(4, 64))
        data[:n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        corpus.append(("header_corrupted", bytes(data)))
    magic = [b"ID3\x04\x00", b"GIF89a", b"PK\x03\x04", b"%PDF-1.7\n", b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x00\x00\x00WAVE",
             b"\x1aE\xdf\xa3", b"ftypisom", b"#EXTM3U\n", b"ffconcat version 1.0\nfile /etc/passwd\n"]
    for _ in range(120):  # polyglots: one format's signature in front of another's body, or noise
        head = magic[rng.integers(len(magic))]
        body = seeds[names[rng.integers(len(names))]] if rng.random() < 0.5 else rng.bytes(int(rng.integers(10, 5000)))
        corpus.append(("polyglot", head + body))
    for _ in range(150):  # noise of any length
        corpus.append(("random", rng.bytes(int(rng.integers(1, 20_000)))))
    texts = [b"[" * 4000 + b"]" * 4000, b'{"file": "x"}', b"<html><script>alert(1)</script></html>", b"\x00" * 5000,
             b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nhttp://127.0.0.1/x.m3u8\n", b"a" * 10_000]
    for i in range(60):
        corpus.append(("text", texts[i % len(texts)] * int(rng.integers(1, 4))))
    return corpus


def main(argv: list[str] | None = None) -> None:
    """`python -m tests.mediagen OUT.mp4 --seconds 10 --size 1280x720`: a talking-face sample clip."""
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-audio", action="store_true")
    parser.add_argument(
        "--lip-delay", type=float, default=0.0, help="seconds the lips lag the voice (> 0: an out-of-sync fake)"
    )
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    container = {".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi"}.get(args.out.suffix, "mp4")
    data = talking_face_video(
        seconds=args.seconds, size=(width, height), fps=args.fps, container=container,
        with_audio=not args.no_audio, seed=args.seed, lip_delay_s=args.lip_delay,
    )
    args.out.write_bytes(data)
    print(f"wrote {args.out} ({len(data)} bytes, {args.seconds:g} s, {width}x{height} @ {args.fps:g} fps)")


if __name__ == "__main__":
    main()
