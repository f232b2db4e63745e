"""decode_media: containers, sampling grid, rotation, VFR, audio, images and every error path."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest
from skimage.data import astronaut

import media.decode
from media import (
    AUDIO_SAMPLE_RATE,
    FACE_CROP_SIZE,
    MOUTH_CROP_SHAPE,
    N_LIP_POINTS,
    Clip,
    DecodeConfig,
    MediaError,
    MediaTooLargeError,
    NotMediaError,
    UnusableMediaError,
    decode_media,
)
from media.faces import FaceAnalyzer
from tests.mediagen import (
    encode_audio,
    encode_image,
    encode_video,
    face_in_scene_frames,
    numbered_frames,
    read_frame_numbers,
    speech_like_audio,
    vfr_timestamps,
)

NO_FACES = DecodeConfig(analyze_faces=False)  # container tests do not need dlib; faces have their own tests

# (container, encoder, codec name FFmpeg reports on decode)
VIDEO_FORMATS = [
    ("mp4", "libx264", "h264"),
    ("mp4", "libx265", "hevc"),
    ("webm", "libvpx-vp9", "vp9"),
    ("mov", "libx264", "h264"),
    ("matroska", "libx264", "h264"),
    ("avi", "mpeg4", "mpeg4"),
]
CONTAINER_NAMES = {"mp4": "mp4", "webm": "webm", "mov": "mov", "matroska": "matroska", "avi": "avi"}


def assert_shapes(clip: Clip, n_frames: int) -> None:
    """Every per-frame array has the documented dtype and a leading T axis."""
    assert clip.frames.dtype == np.uint8 and clip.frames.ndim == 4 and clip.frames.shape[0] == n_frames
    assert clip.timestamps.shape == (n_frames,) and clip.timestamps.dtype == np.float64
    assert clip.face_found.shape == (n_frames,) and clip.face_found.dtype == bool
    assert clip.face_boxes.shape == (n_frames, 4)
    assert clip.landmarks.shape == (n_frames, 68, 2)
    assert clip.face_crops.shape == (n_frames, FACE_CROP_SIZE, FACE_CROP_SIZE, 3)
    assert clip.mouth_crops.shape == (n_frames, *MOUTH_CROP_SHAPE)
    assert clip.lip_trajectory.shape == (n_frames, N_LIP_POINTS, 2)
    assert clip.flow_frames.dtype == np.uint8 and clip.flow_frames.ndim == 3 and len(clip.flow_frames) == n_frames
    assert clip.audio.dtype == np.float32 and clip.audio.ndim == 1
    assert clip.sample_rate == AUDIO_SAMPLE_RATE
    assert clip.meta.n_frames == n_frames


def test_flow_frames_and_the_copy_sent_to_the_branches() -> None:
    """`flow_frames` is the small grey copy keyframe selection reads; `without_frames` drops only
    the full frames, so the object-store copy shrinks by their size and nothing else changes."""
    import pickle

    from media.keyframes import FLOW_MAX_SIDE, small_gray

    frames = numbered_frames(40, size=(320, 240))
    clip = decode_media(encode_video(frames, "mp4", "libx264", 20, audio=speech_like_audio(2.0)), NO_FACES)
    assert clip.flow_frames.shape == (clip.n_frames, 120, FLOW_MAX_SIDE)
    np.testing.assert_array_equal(clip.flow_frames, np.stack([small_gray(f) for f in clip.frames]))

    light = clip.without_frames()
    assert light.frames is None and clip.frames is not None  # the original is untouched
    assert light.n_frames == clip.n_frames == 20
    for name in ("timestamps", "face_crops", "mouth_crops", "landmarks", "lip_trajectory", "flow_frames", "audio"):
        assert getattr(light, name) is getattr(clip, name), name
    full, sent = len(pickle.dumps(clip, protocol=5)), len(pickle.dumps(light, protocol=5))
    assert full - sent >= clip.frames.nbytes


def test_unsampled_b_frames_are_skipped_and_sampled_ones_are_not(monkeypatch: pytest.MonkeyPatch) -> None:
    """H.264 with B-frames at 30 fps, sampled at 10 fps: non-reference pictures that are not
    sampled are never decoded, yet every sampled frame is the exact one a full decode shows."""
    import media.decode as decode

    frames = numbered_frames(90, size=(128, 48))  # 3 s at 30 fps, numbers up to 65535
    data = encode_video(frames, "mp4", "libx264", 30, encoder_options={"crf": "16", "preset": "veryfast", "bframes": "3"})
    offered: list[int] = []
    original_offer = decode._FramePicker.offer

    def counting_offer(self, frame):
        offered.append(frame.pts)
        return original_offer(self, frame)

    monkeypatch.setattr(decode._FramePicker, "offer", counting_offer)
    clip = decode_media(data, NO_FACES)
    np.testing.assert_array_equal(read_frame_numbers(clip.frames), np.arange(30) * 3)
    assert 30 <= len(offered) < 80, f"decoded {len(offered)} of 90 frames"


@pytest.mark.parametrize("slices", [1, 4], ids=["one-slice", "four-slices"])
def test_frame_threads_change_speed_not_content(slices: int) -> None:
    """One decoding thread (slice threads when a picture has several slices) and FFmpeg's frame
    threads give the same clip, array for array, and the right frames on the grid."""
    frames = numbered_frames(90, size=(256, 96))
    options = {"crf": "16", "preset": "veryfast", "bframes": "3", "slices": str(slices), "keyint": "30"}
    data = encode_video(frames, "mp4", "libx264", 30, audio=speech_like_audio(3.0), encoder_options=options)
    one = decode_media(data, DecodeConfig(analyze_faces=False, frame_threads=False))
    threaded = decode_media(data, DecodeConfig(analyze_faces=False, frame_threads=True))
    np.testing.assert_array_equal(read_frame_numbers(one.frames), np.arange(30) * 3)
    for name in ("frames", "timestamps", "flow_frames", "face_crops", "audio"):
        np.testing.assert_array_equal(getattr(one, name), getattr(threaded, name), err_msg=name)


@pytest.mark.parametrize("with_audio", [False, True], ids=["video", "video+audio"])
@pytest.mark.parametrize(
    ("container", "encoder", "codec"), VIDEO_FORMATS, ids=[f"{c}-{e}" for c, e, _ in VIDEO_FORMATS]
)
def test_containers_decode_on_the_grid(container: str, encoder: str, codec: str, with_audio: bool) -> None:
    frames = numbered_frames(50)  # 2 s at 25 fps
    audio = speech_like_audio(2.0, 44_100, seed=1) if with_audio else None
    data = encode_video(frames, container, encoder, 25, audio, audio_rate=44_100)
    clip = decode_media(data, NO_FACES)
    assert_shapes(clip, 20)
    np.testing.assert_allclose(clip.timestamps, np.arange(20) / 10, atol=1e-9)
    # the frame shown at t is the latest one with pts <= t: frame floor(t * 25)
    np.testing.assert_array_equal(read_frame_numbers(clip.frames), np.floor(np.arange(20) * 2.5).astype(int))
    meta = clip.meta
    assert (meta.kind, meta.container, meta.video_codec) == ("video", CONTAINER_NAMES[container], codec)
    assert (meta.width, meta.height, meta.rotation) == (64, 48, 0)
    assert meta.native_fps == pytest.approx(25.0)
    assert meta.duration_s == pytest.approx(2.0, abs=0.1)
    assert not meta.variable_frame_rate
    assert meta.has_video and meta.has_audio == with_audio and meta.size_bytes == len(data)
    if with_audio:
        assert meta.audio_codec is not None
        assert len(clip.audio) / AUDIO_SAMPLE_RATE == pytest.approx(2.0, abs=0.06)
        assert np.abs(clip.audio).max() > 0.1
    else:
        assert len(clip.audio) == 0 and meta.audio_codec is None


def _can_encode(codec: str) -> bool:
    try:
        av.codec.Codec(codec, "w")
    except (av.error.FFmpegError, ValueError):
        return False
    return True


needs_svtav1 = pytest.mark.skipif(not _can_encode("libsvtav1"), reason="this PyAV build has no AV1 encoder")


@needs_svtav1
@pytest.mark.parametrize("container", ["mp4", "webm"])
def test_av1_video_is_decoded(container: str) -> None:
    """AV1 (phones, YouTube, WebM) is decoded by libdav1d; the allow-list admits it by its codec, `av1`, and the
    answer names that. (It was refused as an "unsupported video codec (libdav1d)" before.) SVT-AV1 encodes
    nothing under 64x64, hence the larger frames here."""
    frames, box = face_in_scene_frames(20, (320, 240), 96, (0.5, 0.5))
    data = encode_video(frames, container, "libsvtav1", 10, speech_like_audio(2.0, 48_000), audio_rate=48_000)
    with av.open(io.BytesIO(data)) as stored:
        assert stored.streams.video[0].codec_context.name == "libdav1d"
    clip = decode_media(data)
    assert (clip.meta.kind, clip.meta.container, clip.meta.video_codec) == ("video", container, "av1")
    assert clip.meta.n_frames == 20 and clip.meta.has_audio
    assert clip.meta.face_coverage == 1.0
    assert np.abs(clip.frames[0].astype(int) - frames[0]).mean() < 12  # the picture, decoded


@pytest.mark.parametrize("rotation", [90, 180, 270])
@pytest.mark.parametrize("container", ["mp4", "mov", "matroska"])
def test_rotated_video_comes_out_upright(container: str, rotation: int) -> None:
    upright = np.full((5, 96, 64, 3), 128, np.uint8)  # portrait, with a distinct colour in three corners
    upright[:, :24, :24] = (255, 0, 0)
    upright[:, :24, -24:] = (0, 255, 0)
    upright[:, -24:, -24:] = (0, 0, 255)
    data = encode_video(upright, container, "libx264", 25, rotation=rotation)
    with av.open(io.BytesIO(data)) as stored:
        coded = stored.streams.video[0].codec_context
        coded_shape = (coded.height, coded.width)
    assert coded_shape == ((64, 96) if rotation in (90, 270) else (96, 64))  # really stored sideways
    clip = decode_media(data, NO_FACES)
    assert clip.frames.shape[1:] == (96, 64, 3)
    assert np.abs(clip.frames[0].astype(int) - upright[0]).mean() < 4
    assert (clip.meta.width, clip.meta.height, clip.meta.rotation) == (64, 96, rotation)


def test_unrotated_reference_would_fail_the_upright_check() -> None:
    """Guard for the rotation test: a sideways picture really differs from the upright one."""
    upright = np.full((96, 64, 3), 128, np.uint8)
    upright[:24, :24] = (255, 0, 0)
    turned = np.rot90(np.rot90(upright))
    assert np.abs(turned.astype(int) - upright).mean() > 20


@pytest.mark.parametrize(
    ("container", "encoder"), [("mp4", "libx264"), ("matroska", "libx264"), ("webm", "libvpx-vp9")]
)
def test_variable_frame_rate_is_sampled_by_timestamp(container: str, encoder: str) -> None:
    frames = numbered_frames(40)
    times = vfr_timestamps(40, 25)  # bursts of 20 ms and gaps of 80 ms
    clip = decode_media(encode_video(frames, container, encoder, 25, vfr=True), NO_FACES)
    assert clip.meta.variable_frame_rate
    expected_span = times[-1] + 0.08  # last frame lasts one interval of the pattern
    assert clip.meta.duration_s == pytest.approx(expected_span, abs=0.05)
    np.testing.assert_allclose(clip.timestamps, np.arange(len(clip.timestamps)) / 10, atol=1e-9)
    shown = np.searchsorted(times, clip.timestamps + 1e-6, side="right") - 1
    np.testing.assert_array_equal(read_frame_numbers(clip.frames), shown)
    # a frame-index sampler would be wrong here: index 2.5 * k is not the frame shown at k / 10
    assert not np.array_equal(shown, np.floor(np.arange(len(shown)) * 2.5).astype(int))


def test_long_video_spreads_max_frames_over_its_duration(monkeypatch: pytest.MonkeyPatch) -> None:
    frames = numbered_frames(250)  # 25 s at 10 fps, a keyframe every 5 frames
    data = encode_video(frames, "mp4", "libx264", 10, keyframe_interval=5)
    decoded_packets = 0
    real_decode = media.decode._safe_decode

    def counting_decode(stream: av.stream.Stream, packet: av.Packet | None) -> list:
        nonlocal decoded_packets
        decoded_packets += packet is not None and stream.type == "video"
        return real_decode(stream, packet)

    monkeypatch.setattr(media.decode, "_safe_decode", counting_decode)
    clip = decode_media(data, DecodeConfig(analyze_faces=False, max_frames=20))
    step = 25.0 / 20
    np.testing.assert_allclose(clip.timestamps, np.arange(20) * step, atol=1e-9)
    expected = np.floor(np.arange(20) * step * 10 + 1e-6).astype(int)  # latest frame at or before each sample
    np.testing.assert_array_equal(read_frame_numbers(clip.frames), expected)
    assert clip.meta.duration_s == pytest.approx(25.0, abs=0.01)
    assert decoded_packets < 150  # groups of pictures without a sampled frame were skipped


@pytest.mark.parametrize("max_frames", [12, 14, 21])
def test_skipping_open_gops_keeps_leading_pictures(max_frames: int) -> None:
    """HEVC open GOPs: frames shown before a keyframe but coded after it need the previous group."""
    x265 = "log-level=error:keyint=8:min-keyint=8:open-gop=1:bframes=3:scenecut=0"
    data = encode_video(numbered_frames(200), "mp4", "libx265", 10, encoder_options={"x265-params": x265})
    clip = decode_media(data, DecodeConfig(analyze_faces=False, max_frames=max_frames))
    expected = np.floor(clip.timestamps * 10 + 1e-6).astype(int)
    assert (expected % 8 >= 5).any()  # some sampled frames are leading pictures of a group
    np.testing.assert_array_equal(read_frame_numbers(clip.frames), expected)


def test_frames_are_resized_to_max_side_keeping_aspect() -> None:
    frames = np.tile(np.linspace(0, 255, 400, dtype=np.uint8)[None, None, :, None], (3, 300, 1, 3))
    clip = decode_media(encode_video(frames, "mp4", "libx264", 25), DecodeConfig(analyze_faces=False, max_side=200))
    assert clip.frames.shape[1:] == (150, 200, 3)
    assert (clip.meta.width, clip.meta.height) == (400, 300)  # native display size
    assert clip.frames[0, 75, 5, 0] < 30 and clip.frames[0, 75, 195, 0] > 225  # the gradient survived resizing


def _bt709_video(picture: np.ndarray, n_frames: int = 3) -> bytes:
    """H.264 tagged BT.709 (as HD cameras tag theirs), converted to YUV with that matrix."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.height, stream.width = picture.shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.colorspace = 1  # ITU-R BT.709
        for _ in range(n_frames):
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.colorspace = 1
            for packet in stream.encode(frame.reformat(format="yuv420p", dst_colorspace=1)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def test_downscaled_yuv_frames_keep_the_source_colours(monkeypatch: pytest.MonkeyPatch) -> None:
    """Frames are scaled in YUV, then converted with the stream's own matrix (BT.709 here).

    Against the source picture the mean error is ~2.4 of 255; read with the BT.601 matrix it
    would be ~4.1. Against the one-pass conversion (scale and convert at once) ~1.3.
    """
    picture = cv2.resize(astronaut(), (960, 540), interpolation=cv2.INTER_AREA)
    data = _bt709_video(picture)
    config = DecodeConfig(analyze_faces=False, max_side=480)
    frames = decode_media(data, config).frames.astype(int)
    expected = cv2.resize(picture, (480, 270), interpolation=cv2.INTER_AREA).astype(int)
    assert frames.shape[1:] == (270, 480, 3)
    assert np.abs(frames - expected).mean() < 3.0
    monkeypatch.setattr(media.decode, "_SCALE_IN_YUV", ())  # the one-pass conversion
    one_pass = decode_media(data, config).frames.astype(int)
    assert np.abs(frames - one_pass).mean() < 2.0


def test_anamorphic_video_is_shown_at_its_display_aspect() -> None:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.sample_aspect_ratio = Fraction(2, 1)  # pixels twice as wide as tall
        for rgb in numbered_frames(5):
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    clip = decode_media(buf.getvalue(), NO_FACES)
    assert clip.frames.shape[1:] == (48, 128, 3) and (clip.meta.width, clip.meta.height) == (128, 48)


def test_audio_is_16k_mono_float32_and_aligned_with_video() -> None:
    sr = 44_100
    t = np.arange(int(1.5 * sr)) / sr
    tone = np.where(t >= 0.5, 0.5 * np.sin(2 * np.pi * 440 * t), 0.0).astype(np.float32)
    stereo = np.stack([tone, 0.5 * tone], axis=1)  # (N, 2) at 44.1 kHz
    clip = decode_media(encode_video(numbered_frames(38), "mp4", "libx264", 25, stereo, audio_rate=sr), NO_FACES)
    assert clip.audio.dtype == np.float32 and clip.audio.ndim == 1
    assert len(clip.audio) / AUDIO_SAMPLE_RATE == pytest.approx(1.5, abs=0.03)
    onset = np.argmax(np.abs(clip.audio) > 0.1) / AUDIO_SAMPLE_RATE
    assert onset == pytest.approx(0.5, abs=0.01)
    spectrum = np.abs(np.fft.rfft(clip.audio[AUDIO_SAMPLE_RATE // 2 + 1000 :]))
    peak_hz = np.argmax(spectrum) * AUDIO_SAMPLE_RATE / (2 * (len(spectrum) - 1))
    assert peak_hz == pytest.approx(440, abs=5)
    assert 0.3 < np.abs(clip.audio).max() < 0.6  # stereo downmixed, not summed or dropped


@pytest.mark.parametrize("container", ["mp4", "matroska"])
def test_late_audio_is_padded_to_the_video_clock(container: str) -> None:
    t = np.arange(AUDIO_SAMPLE_RATE) / AUDIO_SAMPLE_RATE
    tone = np.where(t >= 0.5, 0.5 * np.sin(2 * np.pi * 440 * t), 0.0).astype(np.float32)  # 1 s, onset at 0.5 s
    data = encode_video(numbered_frames(38), container, "libx264", 25, tone, audio_delay_s=0.3)
    clip = decode_media(data, NO_FACES)
    onset = np.argmax(np.abs(clip.audio) > 0.1) / AUDIO_SAMPLE_RATE
    assert onset == pytest.approx(0.8, abs=0.01)
    assert not clip.audio[: int(0.29 * AUDIO_SAMPLE_RATE)].any()


@pytest.mark.parametrize(
    ("fmt", "codec"), [("wav", "pcm_s16le"), ("flac", "flac"), ("mp3", "mp3"), ("ogg", "opus"), ("m4a", "aac")]
)
def test_audio_files_are_detected_as_audio(fmt: str, codec: str) -> None:
    stereo = np.stack([speech_like_audio(1.5, 44_100, seed=2), speech_like_audio(1.5, 44_100, seed=3)], axis=1)
    clip = decode_media(encode_audio(stereo, 44_100, fmt))
    assert clip.meta.kind == "audio" and not clip.meta.has_video and clip.meta.has_audio
    assert clip.meta.audio_codec == codec and clip.meta.video_codec is None
    assert (clip.meta.width, clip.meta.height, clip.meta.native_fps) == (0, 0, None)
    assert clip.frames.shape == (0, 0, 0, 3)
    assert_shapes(clip, 0)
    assert clip.meta.face_coverage == 0.0
    assert len(clip.audio) / AUDIO_SAMPLE_RATE == pytest.approx(1.5, abs=0.03)
    assert clip.meta.duration_s == pytest.approx(1.5, abs=0.03)


def test_mp3_with_cover_art_is_audio() -> None:
    data = encode_audio(speech_like_audio(1.0), 16_000, "mp3", cover_art=np.full((64, 64, 3), 200, np.uint8))
    with av.open(io.BytesIO(data)) as stored:
        assert [s.type for s in stored.streams] == ["audio", "video"]  # the picture is a video stream
    clip = decode_media(data)
    assert clip.meta.kind == "audio" and clip.frames.shape == (0, 0, 0, 3) and clip.meta.video_codec is None
    assert len(clip.audio) / AUDIO_SAMPLE_RATE == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize(("fmt", "tolerance"), [("jpeg", 6), ("png", 0), ("webp", 6), ("bmp", 0), ("tiff", 0)])
def test_images_are_detected_as_images(fmt: str, tolerance: float) -> None:
    photo = astronaut()[::2, ::2]  # (256, 256, 3)
    clip = decode_media(encode_image(photo, fmt), NO_FACES)
    assert clip.meta.kind == "image" and clip.meta.has_video and not clip.meta.has_audio
    assert_shapes(clip, 1)
    np.testing.assert_array_equal(clip.timestamps, [0.0])
    assert (clip.meta.width, clip.meta.height, clip.meta.duration_s, clip.meta.native_fps) == (256, 256, 0.0, None)
    assert np.abs(clip.frames[0].astype(int) - photo).mean() <= tolerance


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_jpeg_exif_orientation_is_applied(rotation: int) -> None:
    upright = np.full((96, 64, 3), 128, np.uint8)
    upright[:24, :24] = (255, 0, 0)
    upright[-24:, -24:] = (0, 0, 255)
    clip = decode_media(encode_image(upright, "jpeg", rotation=rotation), NO_FACES)
    assert clip.frames.shape == (1, 96, 64, 3)
    assert np.abs(clip.frames[0].astype(int) - upright).mean() < 4
    assert (clip.meta.width, clip.meta.height, clip.meta.rotation) == (64, 96, rotation)


def test_large_image_is_resized() -> None:
    clip = decode_media(encode_image(astronaut(), "png"), DecodeConfig(analyze_faces=False, max_side=128))
    assert clip.frames.shape == (1, 128, 128, 3) and (clip.meta.width, clip.meta.height) == (512, 512)


def test_opencv_fallback_reads_stills_ffmpeg_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")

    monkeypatch.setattr(media.decode.av, "open", refuse)
    photo = astronaut()[::4, ::4]
    clip = decode_media(encode_image(photo, "png"), NO_FACES)
    assert clip.meta.kind == "image" and clip.meta.container == "opencv"
    np.testing.assert_array_equal(clip.frames[0], photo)
    with pytest.raises(NotMediaError):
        decode_media(b"plain text, still not an image", NO_FACES)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello, this is a text file and not a video\n" * 20,
        b'{"video": "definitely not"}',
        b"<html><body>nope</body></html>",
        b"1\n00:00:01,000 --> 00:00:02,000\nsubtitles only\n\n",
        np.random.default_rng(0).integers(0, 256, 4096).astype(np.uint8).tobytes(),
    ],
    ids=["empty", "text", "json", "html", "srt-subtitles", "random"],
)
def test_non_media_is_refused(data: bytes) -> None:
    with pytest.raises(NotMediaError) as info:
        decode_media(data, NO_FACES)
    assert info.value.http_status == 415


def test_mp4_truncated_before_its_index_is_not_media() -> None:
    data = encode_video(numbered_frames(50), "mp4", "libx264", 25)
    assert data.find(b"moov") > len(data) // 2  # the index is written at the end
    with pytest.raises(NotMediaError):
        decode_media(data[: len(data) // 2], NO_FACES)


def _fragmented_mp4(frames: np.ndarray) -> bytes:
    """MP4 with the index first and media in fragments, as live recorders write it."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4", options={"movflags": "frag_keyframe+empty_moov"}) as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.gop_size = 10
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def test_truncated_fragmented_mp4_keeps_what_decodes() -> None:
    data = _fragmented_mp4(numbered_frames(50))
    clip = decode_media(data[: len(data) // 2], NO_FACES)
    assert 0 < clip.n_frames < 20
    numbers = read_frame_numbers(clip.frames)
    np.testing.assert_array_equal(numbers, np.floor(np.arange(clip.n_frames) * 2.5).astype(int))


def test_header_without_frames_is_unusable() -> None:
    data = _fragmented_mp4(numbered_frames(50))
    header = data[: data.find(b"moof") - 4]
    with pytest.raises(UnusableMediaError) as info:
        decode_media(header, NO_FACES)
    assert info.value.http_status == 422


@pytest.mark.parametrize("container", ["mp4", "avi"])
def test_container_with_zero_frames_is_unusable(container: str) -> None:
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream("libx264" if container == "mp4" else "mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        out.start_encoding()
    with pytest.raises(UnusableMediaError):
        decode_media(buf.getvalue(), NO_FACES)


def test_corrupt_video_stream_is_unusable() -> None:
    data = bytearray(encode_video(numbered_frames(30), "mp4", "libx264", 25))
    start, end = data.find(b"mdat") + 4, data.find(b"moov") - 4
    data[start + 8 : end] = np.random.default_rng(1).integers(0, 256, end - start - 8).astype(np.uint8).tobytes()
    with pytest.raises(UnusableMediaError):
        decode_media(bytes(data), NO_FACES)


def test_damaged_uploads_raise_only_media_errors() -> None:
    """Byte-level damage anywhere in a file may decode or fail, but only with a MediaError."""
    clean = encode_video(numbered_frames(20), "mp4", "libx264", 25, speech_like_audio(0.8, 16_000))
    rng = np.random.default_rng(7)
    for _ in range(25):
        damaged = bytearray(clean)
        at = rng.integers(0, len(clean), 12)
        damaged_bytes = rng.integers(0, 256, 12).astype(np.uint8)
        for position, value in zip(at, damaged_bytes):
            damaged[position] = value
        try:
            clip = decode_media(bytes(damaged), NO_FACES)
        except MediaError:
            continue
        assert clip.frames.ndim == 4


def test_decode_config_refuses_unknown_settings() -> None:
    """A typo in MediaDecoder's user_config is an error, not a silently ignored key (the byte limit is the edge's)."""
    with pytest.raises(ValueError, match="max_bytes"):
        DecodeConfig(max_bytes=1)
    with pytest.raises(ValueError, match="detect_every"):
        DecodeConfig.model_validate({"detect_every": 5})


@pytest.mark.parametrize("kind", ["video", "audio"])
def test_media_over_max_duration_is_too_large(kind: str) -> None:
    if kind == "video":
        data = encode_video(numbered_frames(50), "matroska", "libx264", 25)
    else:
        data = encode_audio(speech_like_audio(2.0), 16_000, "wav")
    with pytest.raises(MediaTooLargeError):
        decode_media(data, DecodeConfig(analyze_faces=False, max_duration_s=1.0))
    clip = decode_media(data, DecodeConfig(analyze_faces=False, max_duration_s=3.0))
    assert clip.meta.duration_s == pytest.approx(2.0, abs=0.05)


def test_frames_over_max_pixels_are_too_large() -> None:
    data = encode_image(astronaut(), "png")
    with pytest.raises(MediaTooLargeError):
        decode_media(data, DecodeConfig(analyze_faces=False, max_pixels=512 * 512 - 1))


def test_playlists_cannot_read_local_files(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ffconcat upload naming a file next to the server's working directory must not be followed."""
    (tmp_path / "secret.mp4").write_bytes(encode_video(numbered_frames(10), "mp4", "libx264", 25))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NotMediaError):
        decode_media(b"ffconcat version 1.0\nfile 'secret.mp4'\n", NO_FACES)


def test_decode_runs_face_analysis_by_default() -> None:
    photo = astronaut()
    clip = decode_media(encode_image(photo, "png"))
    assert clip.face_found.tolist() == [True] and clip.meta.face_coverage == 1.0
    assert not np.isnan(clip.landmarks).any()


@pytest.mark.parametrize(("max_frames", "step"), [(300, 0.1), (20, 25.0 / 20)])
def test_the_face_tracker_is_told_the_sampling_step(max_frames: int, step: float) -> None:
    """The tracker's limit on how far a head turns between frames is per second (`media.faces._plausible_step`):
    the decoder passes the spacing of its samples, which is wider where a long video's `max_frames` are spread."""
    told: list[float] = []

    class Spy(FaceAnalyzer):
        def analyze(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            told.append(kwargs.get("step_s", args[6] if len(args) > 6 else None))
            return super().analyze(*args, **kwargs)

    frames = numbered_frames(250)  # 25 s at 10 fps
    decode_media(encode_video(frames, "mp4", "libx264", 10), DecodeConfig(max_frames=max_frames), Spy())
    assert told == [pytest.approx(step, rel=1e-6)]


def test_decode_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="analysis_fps"):
        DecodeConfig(analysis_fps=0)
    with pytest.raises(ValueError, match="max_frames"):
        DecodeConfig(max_frames=-1)


def _gsm_frames(n: int, seed: int = 0) -> bytes:
    """`n` raw GSM 06.10 frames (33 bytes, 0xD signature nibble, random parameters): 20 ms of 8 kHz audio each."""
    rng = np.random.default_rng(seed)
    body = rng.integers(0, 256, size=(n, 33), dtype=np.uint8)
    body[:, 0] = 0xD0 | (body[:, 0] & 0x0F)
    return body.tobytes()


def _gsm_ms_wav(blocks: int, seed: int = 0) -> bytes:
    """A WAV of Microsoft GSM 6.10 (format tag 0x31): 65-byte blocks of 320 samples at 8 kHz."""
    import struct

    data = np.random.default_rng(seed).integers(0, 256, size=65 * blocks, dtype=np.uint8).tobytes()
    fmt = struct.pack("<HHIIHHHH", 0x31, 1, 8000, 1625, 65, 0, 2, 320)
    fact = struct.pack("<I", 320 * blocks)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"fact" + struct.pack("<I", 4) + fact
    chunks += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def _wav_with(codec: str, audio: np.ndarray, rate: int, container: str = "wav") -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray((audio * 32767).astype(np.int16)[None], format="s16", layout="mono")
        frame.sample_rate = rate
        frames = av.AudioResampler(format=stream.format.name, layout="mono", rate=rate).resample(frame)
        for packet in [*(p for f in frames for p in stream.encode(f)), *stream.encode(None)]:
            out.mux(packet)
    return buf.getvalue()


@pytest.mark.parametrize(("make", "codec"), [
    (lambda: _gsm_frames(50), "gsm"),  # Asterisk's native prompt format, as a raw .gsm file
    (lambda: _gsm_ms_wav(25), "gsm_ms"),  # call recorders' GSM-in-WAV
    (lambda: _wav_with("adpcm_ima_wav", speech_like_audio(1.0, 8000, seed=4), 8000), "adpcm_ima_wav"),
    (lambda: _wav_with("g722", speech_like_audio(1.0, 16_000, seed=5), 16_000), "g722"),
    (lambda: _wav_with("adpcm_g726", speech_like_audio(1.0, 8000, seed=6), 8000), "g726"),  # FFmpeg's decoder name
    (lambda: _wav_with("pcm_mulaw", speech_like_audio(1.0, 8000, seed=7), 8000, "au"), "pcm_mulaw"),  # Sun/NeXT .au
    (lambda: _wav_with("wavpack", speech_like_audio(1.0, 44_100, seed=8), 44_100, "wv"), "wavpack"),  # archives' lossless
    (lambda: _wav_with("ac3", speech_like_audio(1.0, 48_000, seed=9), 48_000, "ac3"), "ac3"),  # a disc rip's track
    (lambda: _wav_with("eac3", speech_like_audio(1.0, 48_000, seed=10), 48_000, "eac3"), "eac3"),  # a broadcast's
])
def test_telephony_audio_decodes(make, codec: str) -> None:
    """One second of telephone-coded (or Dolby-coded) speech: decoded to 16 kHz mono like any other audio upload."""
    clip = decode_media(make())
    assert clip.meta.kind == "audio" and clip.meta.audio_codec == codec and clip.meta.has_audio
    assert len(clip.audio) / AUDIO_SAMPLE_RATE == pytest.approx(1.0, abs=0.05)
    assert np.isfinite(clip.audio).all() and np.abs(clip.audio).max() > 0


def _heic(rgb: np.ndarray, quality: int = 90, orientation: int = 1, tile: int | None = None) -> bytes:
    """A real HEIC file of `rgb` (pillow-heif's x265 encoder), with an EXIF orientation tag; with `tile`, a grid
    of tile x tile pictures, as phones write them."""
    import PIL.Image
    import pillow_heif

    exif = PIL.Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    image = pillow_heif.from_pillow(PIL.Image.fromarray(np.ascontiguousarray(rgb)))
    image.save(buf, quality=quality, exif=exif.tobytes(), **({"tile_size": tile} if tile else {}))
    return buf.getvalue()


def _one_frame_track(brand: str, tracks: int = 1, encoder: str = "libx264") -> bytes:
    """What FFmpeg's MP4 demuxer shows of a HEIF/AVIF file libheif cannot decode: one-frame track(s) under its brand
    (H.264 by default: quick, and this FFmpeg's MP4 muxer now and then fails one-frame HEVC pairs)."""
    picture = np.ascontiguousarray(astronaut()[::2, ::2])  # 256 x 256
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4", options={"brand": brand}) as out:
        streams = []
        for _ in range(tracks):
            stream = out.add_stream(encoder, rate=1)
            stream.width, stream.height, stream.pix_fmt = 256, 256, "yuv420p"
            streams.append(stream)
        packets = []
        for stream in streams:
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts, frame.time_base = 0, Fraction(1, 1)
            packets += [*stream.encode(frame), *stream.encode(None)]
        for packet in packets:
            out.mux(packet)
    return buf.getvalue()


def test_a_heic_photo_is_decoded_whole_by_libheif() -> None:
    """A phone photo saved as HEIC is a photo (not a one-frame video or one tile), at its size, with its face found."""
    picture = astronaut()
    data = _heic(picture)
    clip = decode_media(data)
    assert (clip.meta.kind, clip.meta.container, clip.meta.n_frames) == ("image", "heif", 1)
    assert (clip.meta.width, clip.meta.height) == (512, 512)
    assert np.abs(clip.frames[0].astype(int) - picture).mean() < 4  # the picture, not a tile or a thumbnail
    assert clip.face_found[0]
    with pytest.raises(MediaTooLargeError, match="512x512"):  # sized from the header, before decoding
        decode_media(data, DecodeConfig(analyze_faces=False, max_pixels=100_000))
    with pytest.raises(MediaError):  # cut short: a JSON error, never a crash
        decode_media(data[: len(data) // 2], NO_FACES)
    # A grid of four 256 px tiles, which FFmpeg shows as four separate one-frame streams: joined whole.
    tiled = _heic(picture, tile=256)
    with av.open(io.BytesIO(tiled)) as container:
        assert [(s.codec_context.width, s.codec_context.height) for s in container.streams.video] == [(256, 256)] * 4
    clip = decode_media(tiled)
    assert (clip.meta.kind, clip.meta.width, clip.meta.height) == ("image", 512, 512) and clip.face_found[0]
    assert np.abs(clip.frames[0].astype(int) - picture).mean() < 4
    # A phone holds a portrait photo sideways and says "turn 90 degrees clockwise": it comes out upright.
    upright = np.ascontiguousarray(picture[:, 56:456])  # 512 high, 400 wide
    clip = decode_media(_heic(np.rot90(upright), orientation=6))
    assert (clip.meta.width, clip.meta.height) == (400, 512) and clip.face_found[0]
    assert np.abs(clip.frames[0].astype(int) - upright).mean() < 4


def test_heif_that_libheif_cannot_decode_goes_to_ffmpeg() -> None:
    """AVIF (no AV1 decoder in pillow-heif's wheel) reaches FFmpeg: one image is an image, tiles are a clear 415."""
    clip = decode_media(_one_frame_track("avif"), NO_FACES)
    assert (clip.meta.kind, clip.meta.container) == ("image", "avif")
    if _can_encode("libsvtav1"):
        clip = decode_media(_one_frame_track("avif", encoder="libsvtav1"), NO_FACES)  # a real AVIF: AV1 inside
        assert (clip.meta.kind, clip.meta.container, clip.meta.video_codec) == ("image", "avif", "av1")
    assert decode_media(_one_frame_track("isom"), NO_FACES).meta.kind == "video"  # an MP4 brand stays a video
    with pytest.raises(NotMediaError, match="tiled HEIF/AVIF image"):
        decode_media(_one_frame_track("avif", tracks=2), NO_FACES)
