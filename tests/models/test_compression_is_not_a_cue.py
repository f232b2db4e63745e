"""Issue 17, item 4: re-compressing authentic media (JPEG q50-95, H.264 CRF 18-40, VP9, resizing, double
compression; HEVC too) must not turn it into a `fake` verdict, with the weights and settings `serve.cpu.yaml` serves."""

from __future__ import annotations

import io

import av
import cv2
import numpy as np
import pytest
from skimage.data import astronaut

from tests.mediagen import encode_video, talking_face_video
from training.analyst import DEFAULT_PROFILE, Analyzer


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    analyzer = Analyzer(None, None, DEFAULT_PROFILE, None)
    folder = tmp_path_factory.mktemp("recompressed")

    def verdict(name: str, data: bytes) -> tuple[str, float]:
        path = folder / name
        path.write_bytes(data)
        answer = analyzer(path)[0]
        return answer["verdict"], answer["fake_probability"]

    return verdict


def _jpeg(rgb: np.ndarray, quality: int) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return data.tobytes()


def _frames(data: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(data)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_recompressed_authentic_photos_are_never_called_fake(served) -> None:
    photo = astronaut()
    once = cv2.imdecode(np.frombuffer(_jpeg(photo, 60), np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    variants = {
        **{f"jpeg q{q}": _jpeg(photo, q) for q in (95, 75, 50)},
        "resized to half, q75": _jpeg(cv2.resize(photo, (256, 256), interpolation=cv2.INTER_AREA), 75),
        "double jpeg q60 -> q80": _jpeg(np.ascontiguousarray(once), 80),
    }
    answers = {name: served(f"{i}.jpg", data) for i, (name, data) in enumerate(variants.items())}
    print("\n" + "\n".join(f"  {name}: {v} (P(fake) {p:.3f})" for name, (v, p) in answers.items()))
    assert all(v != "fake" for v, _ in answers.values()), answers


def test_recompressed_authentic_clips_are_never_called_fake(served) -> None:
    frames = _frames(talking_face_video(seconds=3.0, size=(320, 240), with_audio=False, seed=11))
    twice = _frames(encode_video(frames, fps=25, encoder_options={"crf": "35"}))
    variants = {
        **{f"h264 crf {crf}": encode_video(frames, fps=25, encoder_options={"crf": str(crf)}) for crf in (18, 28, 40)},
        "vp9": encode_video(frames, container="webm", codec="libvpx-vp9", fps=25),
        **{f"hevc crf {crf} {preset}": encode_video(frames, codec="libx265", fps=25, encoder_options={
            "crf": str(crf), "preset": preset, "x265-params": "log-level=none"}) for crf, preset in ((28, "medium"), (35, "ultrafast"))},
        "resized to half": encode_video([cv2.resize(f, (160, 120), interpolation=cv2.INTER_AREA) for f in frames], fps=25),
        "double h264 crf 35 -> 23": encode_video(twice, fps=25, encoder_options={"crf": "23"}),
    }
    answers = {name: served(f"{i}.{'webm' if name == 'vp9' else 'mp4'}", data) for i, (name, data) in enumerate(variants.items())}
    print("\n" + "\n".join(f"  {name}: {v} (P(fake) {p:.3f})" for name, (v, p) in answers.items()))
    assert all(v != "fake" for v, _ in answers.values()), answers
