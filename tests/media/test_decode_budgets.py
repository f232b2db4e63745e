"""Hostile uploads meet the decoder's limits: allow-listed formats and codecs only, budgets on the work a
file can ask for, and pictures sized from headers before a pixel is decoded."""

from __future__ import annotations

import io
import subprocess
import sys
import time

import av
import pytest

from media import (
    DecodeConfig,
    DecodeDeadlineError,
    MediaTooLargeError,
    NotMediaError,
    UnusableMediaError,
    decode_media,
)
from tests.mediagen import (
    _add_audio_stream,
    _encode_audio_packets,
    decode_bomb,
    encode_audio,
    encode_video,
    huge_png,
    numbered_frames,
    speech_like_audio,
)

NO_FACES = DecodeConfig(analyze_faces=False)


def _speech_in(container: str, codec: str) -> bytes:
    """Half a second of speech-like audio through any FFmpeg muxer and encoder (mediagen's stream helpers)."""
    audio, buf = speech_like_audio(0.5), io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = _add_audio_stream(out, audio, 16_000, codec)
        for packet in _encode_audio_packets(stream, audio, 16_000, 0.0):
            out.mux(packet)
    return buf.getvalue()


@pytest.mark.parametrize(
    "limits, message",
    [
        ({"max_decoded_frames": 500}, "video frames"),  # from its pace, before the 500th
        ({"max_packets": 500}, "packets to read"),
        ({"max_decoded_pixels": 16 * 16 * 500}, "pixels"),
        ({"deadline_s": 1e-6}, "decoding takes more than"),
    ],
)
def test_every_decode_budget_refuses_a_single_gop_bomb(limits: dict, message: str) -> None:
    data = decode_bomb()
    assert decode_media(data, NO_FACES).n_frames > 0  # within the default budgets it decodes
    with pytest.raises(MediaTooLargeError, match=message):
        decode_media(data, NO_FACES.model_copy(update=limits))


def test_the_packet_budget_trips_in_the_demux_scan_before_any_decoding() -> None:
    # 1,000 packets at 1000 fps (1 s, far under max_duration_s) against a 999-packet budget: refused by the scan.
    data = decode_bomb(n_frames=1_000, fps=1000.0)
    started = time.monotonic()
    with pytest.raises(MediaTooLargeError, match="packets"):
        decode_media(data, NO_FACES.model_copy(update={"max_packets": 999}))
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("side", [8_000, 16_000])  # over max_pixels (50 M); over Pillow's own bomb limit too
def test_a_huge_png_is_refused_from_its_header_without_decoding_it(side: int) -> None:
    data = huge_png(side)
    assert len(data) < 100_000
    # In a fresh process, so the peak resident memory is this decode's own.
    code = (
        "import resource, sys\n"
        "from media import DecodeConfig, MediaTooLargeError, decode_media\n"
        "data = sys.stdin.buffer.read()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    decode_media(data, DecodeConfig(analyze_faces=False))\n"
        "except MediaTooLargeError as exc:\n"
        "    print('413', exc)\n"
        "print('grew_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True, timeout=120)
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert out.startswith("413 image"), out
    grew_kb = int(out.rsplit("grew_kb", 1)[1])
    assert grew_kb < 64 * 1024, out  # 256 MB decoded as 8-bit; the refusal costs almost nothing


def test_formats_outside_the_allow_list_are_not_media() -> None:
    brackets = b"[" * 4000 + b"]" * 4000  # the campaign's text file that FFmpeg read as Nintendo ADPCM
    with pytest.raises(NotMediaError):
        decode_media(brackets, NO_FACES)
    # Creative Voice (.voc): a real audio container, not one the service supports
    with pytest.raises(NotMediaError, match=r"unsupported format \(voc\)"):
        decode_media(_speech_in("voc", "pcm_u8"), NO_FACES)


def test_codecs_outside_the_allow_list_are_not_media() -> None:
    # (IMA ADPCM in WAV is allowed since telephone-coded audio decodes: Yamaha ADPCM stays out)
    with pytest.raises(NotMediaError, match=r"unsupported audio codec \(adpcm_yamaha\)"):
        decode_media(_speech_in("wav", "adpcm_yamaha"), NO_FACES)
    assert decode_media(encode_audio(speech_like_audio(0.5)), NO_FACES).meta.audio_codec == "pcm_s16le"


def test_too_many_streams_are_refused() -> None:
    audio = speech_like_audio(0.5)
    data = encode_video(numbered_frames(5), audio=audio)
    with pytest.raises(MediaTooLargeError, match="streams"):
        decode_media(data, NO_FACES.model_copy(update={"max_streams": 1}))


def test_opencv_fallback_only_sees_known_still_signatures() -> None:
    with pytest.raises((NotMediaError, UnusableMediaError)):
        decode_media(b"GIF89a" + bytes(range(256)) * 8, NO_FACES)
    with pytest.raises(NotMediaError):
        decode_media(b"P6\n4 4\n255\n" + bytes(48), NO_FACES)  # PPM: OpenCV reads it; the service does not


def test_a_decode_that_cannot_finish_by_its_deadline_is_refused_at_once(monkeypatch) -> None:
    """A single-GOP bomb whose every picture is slow (here: 2 ms added to each video decode call, 20,000
    pictures, about 40 s + decoding) is refused once its pace is clear (after 3 s), not at the deadline."""
    import media.decode as decode_module

    real = decode_module._safe_decode

    def slow(stream, packet):
        if stream.type == "video":
            time.sleep(0.002)
        return real(stream, packet)

    data = decode_bomb(20_000)
    monkeypatch.setattr(decode_module, "_safe_decode", slow)
    started = time.monotonic()
    with pytest.raises(DecodeDeadlineError, match=r"would take about \d+ s at its pace so far"):
        decode_media(data, NO_FACES.model_copy(update={"deadline_s": 20.0}))
    assert time.monotonic() - started < 6.0  # judged after 3 s; the deadline is 20 s


def test_a_projection_needs_a_pace_before_it_refuses() -> None:
    from media.decode import _Budget

    budget = _Budget(NO_FACES.model_copy(update={"deadline_s": 30.0}))
    budget.plan(1000)
    budget.started -= 2.0  # 2 s spent on the first pictures: too early to judge, however slow
    for _ in range(10):
        budget.fed_video()
    budget.started -= 1.3  # 11 pictures in 3.3 s: 1,000 would take about 300 s
    with pytest.raises(MediaTooLargeError, match="would take about"):
        budget.fed_video()
    steady = _Budget(NO_FACES.model_copy(update={"deadline_s": 30.0}))
    steady.plan(1800)
    for _ in range(300):  # 300 of 1,800 pictures at 12 ms each: about 21 s in all, within 2x the time left
        steady.started -= 0.012
        steady.fed_video()


@pytest.mark.parametrize(
    "limits, message",
    [({"max_decoded_pixels": 320 * 240 * 400}, "would decode about .* pixels"),
     ({"max_decoded_frames": 400}, "would decode about .* video frames")],
)
def test_a_decode_that_will_cross_a_budget_is_refused_from_its_pace(limits: dict, message: str) -> None:
    """1,500 pictures in one GOP, all needed: a budget of 400 is refused after a few pictures, not at the 400th."""
    from media.decode import _Budget

    seen = []
    real_frame = _Budget.frame

    def counting(self, frame):
        seen.append(1)
        return real_frame(self, frame)

    data = decode_bomb(1500, size=(320, 240))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_Budget, "frame", counting)
        with pytest.raises(MediaTooLargeError, match=message):
            decode_media(data, NO_FACES.model_copy(update=limits))
    assert len(seen) < 50


def test_the_budgets_themselves_still_stop_a_decode_without_a_plan() -> None:
    from media.decode import _Budget

    class Picture:
        width, height = 16, 16

    budget = _Budget(NO_FACES.model_copy(update={"max_decoded_frames": 3}))  # no plan: no projection
    for _ in range(3):
        budget.frame(Picture())
    with pytest.raises(MediaTooLargeError, match="more than 3 video frames to decode"):
        budget.frame(Picture())
