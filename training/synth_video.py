"""Talking-face scenes rendered from scikit-image's photographs, the visual manipulations, encoders and compression.

Authentic content. scikit-image bundles real photographs and no download is needed: the
astronaut portrait supplies a frontal face that dlib detects, and the other photos (cat,
coffee, rocket, telescope field, textures, ...) supply the scenes. A `Subject` composites the
astronaut's head, colour-, scale- and mirror-transformed, onto a crop of one background at
its own place in the frame, so subjects differ in identity cues and scene. A clip then adds
what a camera adds: a smooth pan/zoom (`Camera`), lighting and white-balance drift and
sensor noise (`Lighting`), while the mouth opens and closes with the speech envelope.

Manipulations. `FaceBlend`, `Warp` and `Flicker` act on the head in the subject's own
coordinates before the camera (so they move with the face and leave the rest of the frame
untouched); `Upsample` acts on the finished frame, as a generator's output pasted into a
captured frame would. Each is a frozen dataclass with a `sample(rng)` constructor and a
`meta()` that records its parameters in the manifest.

Compression. `compress_video` and `compress_image` simulate a social-media re-upload: an
optional halving of the resolution, then H.264 at a CRF (JPEG at a matching quality), once or
several times. They work on file bytes so training code can use them as augmentation.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from typing import Literal

import av
import cv2
import numpy as np
from skimage import data as skdata

from training.synth_audio import SAMPLE_RATE, encode_audio_packets

# dlib's 68 landmarks (x, y) on `skimage.data.astronaut()`, from `media.FaceAnalyzer` (face box
# 181,79-274,172). A constant, because loading the 100 MB landmark model costs seconds in
# every worker process; `tests/training/test_benchmark.py` re-derives it.
ASTRONAUT_LANDMARKS = np.array(
    [[179, 103], [179, 115], [180, 126], [181, 137], [184, 149], [190, 159], [199, 168], [209, 175], [220, 178],
     [232, 177], [243, 171], [253, 163], [261, 154], [265, 142], [268, 130], [270, 119], [272, 107], [186, 93],
     [192, 88], [200, 87], [208, 89], [215, 92], [236, 93], [244, 91], [252, 90], [260, 92], [265, 98], [225, 102],
     [225, 111], [225, 119], [225, 127], [214, 131], [219, 133], [224, 134], [229, 133], [234, 132], [195, 101],
     [200, 98], [207, 98], [212, 104], [206, 104], [199, 104], [238, 105], [243, 101], [250, 101], [255, 104],
     [250, 106], [244, 106], [201, 140], [210, 139], [218, 139], [224, 141], [230, 140], [237, 140], [245, 141],
     [237, 151], [229, 155], [223, 156], [216, 155], [208, 150], [204, 141], [217, 143], [223, 144], [229, 144],
     [242, 142], [229, 150], [223, 151], [217, 150]],
    np.float32,
)  # (68, 2)

# scikit-image photographs (bundled, no download) used as scenes behind the subject.
BACKGROUNDS = (
    "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "colorwheel",
    "grass", "gravel", "brick", "camera", "coins", "moon", "clock", "page",
)

_FACE = slice(0, 27)  # jaw and brows: the outline a face swap replaces
_MOUTH = slice(48, 68)
_INNER_LIPS = slice(60, 68)
_RIGHT_EYE, _LEFT_EYE = slice(36, 42), slice(42, 48)
_STAGE_MARGIN = 1.3  # the stage is this much larger than the frame, room for the camera to pan
_CAVITY_RGB = np.array([60, 20, 25], np.float32)  # colour of the open mouth's inside
_BASE_CRF = 18  # the "camera original": visually lossless H.264
_AUDIO_BITRATE = 96_000
_COMPRESSED_AUDIO_BITRATE = 48_000
# x264 settings for reproducible bytes: one thread, and no macroblock-tree rate control, with
# which the x264 in PyAV's wheels gave different bitstreams for identical input from one encode
# to the next in the same process (seen with av 18.1; the benchmark tests catch a regression).
_X264_OPTIONS = {"preset": "veryfast", "threads": "1", "x264-params": "mbtree=0"}
_LEVEL_PATTERN = re.compile(r"^(?:none|crf(\d+)(_half)?(?:x(\d+))?)$")


@dataclass(frozen=True)
class Subject:
    """One identity in one place; every clip, image and utterance of a benchmark `group` shares it."""

    group: str
    background: str  # a name in BACKGROUNDS
    bg_box: tuple[float, float, float]  # crop centre x, y as fractions of the photo and crop width fraction
    bg_flip: bool
    bg_gain: tuple[float, float, float]  # per-channel colour cast of the scene
    face_gain: tuple[float, float, float]  # per-channel gain (brightness x a slight tint): a skin-tone cue
    face_gamma: float
    face_flip: bool
    face_height: float  # brow-to-chin height as a fraction of the frame height
    face_offset: tuple[float, float]  # face centre minus frame centre, fractions of frame width / height
    mouth_gap: float  # widest mouth opening as a fraction of the face height

    @classmethod
    def sample(cls, group: str, rng: np.random.Generator) -> Subject:
        return cls(
            group=group,
            background=str(rng.choice(BACKGROUNDS)),
            bg_box=(float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.5, 1.0))),
            bg_flip=bool(rng.random() < 0.5),
            bg_gain=tuple(float(g) for g in rng.uniform(0.8, 1.15, 3)),
            face_gain=tuple(float(g) for g in rng.uniform(0.8, 1.12) * rng.uniform(0.95, 1.05, 3)),
            face_gamma=float(rng.uniform(0.8, 1.25)),
            face_flip=bool(rng.random() < 0.5),
            face_height=float(rng.uniform(0.4, 0.55)),
            face_offset=(float(rng.uniform(-0.1, 0.1)), float(rng.uniform(-0.06, 0.04))),
            mouth_gap=float(rng.uniform(0.08, 0.12)),
        )


@dataclass
class Scene:
    """A `Subject` prepared for one frame size: float32 layers in stage pixels, built once per clip."""

    stage: np.ndarray  # (Hs, Ws, 3) float32 background
    head: np.ndarray  # (h, w, 3) float32 head-and-shoulders patch
    alpha: np.ndarray  # (h, w, 1) float32 feathered bust mask for compositing
    origin: tuple[int, int]  # head patch top-left in stage pixels (may be negative)
    landmarks: np.ndarray  # (68, 2) float32 in head-patch pixels
    face_mask: np.ndarray  # (h, w) float32 jaw-and-brow hull, 1 inside
    mouth_push: np.ndarray  # (h, w) float32 weight of the lower lip/chin's downward push
    mouth_roi: tuple[int, int, int, int]  # y0, y1, x0, x1: where `mouth_push` is non-zero
    mouth_gap_px: float  # widest opening in head-patch pixels
    paste: tuple[tuple[slice, slice], tuple[slice, slice]] = field(init=False, repr=False)  # stage, head slices
    stage_under_head: np.ndarray = field(init=False, repr=False)  # (h', w', 3) background x (1 - alpha)
    mouth_grid: tuple[np.ndarray, np.ndarray, np.ndarray] = field(init=False, repr=False)  # x, y, push on the ROI

    def __post_init__(self) -> None:
        """Precompute, once per clip, where the head lands, the background's share there and the mouth grid."""
        sh, sw = self.stage.shape[:2]
        ox, oy = self.origin
        x0, y0 = min(max(ox, 0), sw), min(max(oy, 0), sh)
        x1, y1 = max(min(ox + self.head.shape[1], sw), x0), max(min(oy + self.head.shape[0], sh), y0)
        self.paste = ((slice(y0, y1), slice(x0, x1)), (slice(y0 - oy, y1 - oy), slice(x0 - ox, x1 - ox)))
        self.stage_under_head = self.stage[y0:y1, x0:x1] * (1 - self.alpha[self.paste[1]])
        my0, my1, mx0, mx1 = self.mouth_roi
        yy, xx = np.mgrid[my0:my1, mx0:mx1].astype(np.float32)
        self.mouth_grid = (xx, yy, np.ascontiguousarray(self.mouth_push[my0:my1, mx0:mx1]))

    @property
    def face_centre(self) -> np.ndarray:
        return self.landmarks[_FACE].mean(axis=0)  # (2,)


@lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    """`skimage.data.<name>()` as uint8 RGB `(H, W, 3)`; cached per process."""
    img = np.asarray(getattr(skdata, name)())
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))


def build_scene(subject: Subject, size: tuple[int, int]) -> Scene:
    """Stage, head patch, masks and mouth rig for `subject` at frame `size` (width, height)."""
    width, height = size
    stage_w, stage_h = int(round(width * _STAGE_MARGIN)), int(round(height * _STAGE_MARGIN))
    stage = _background(subject, stage_w, stage_h)

    photo = _photo("astronaut")
    marks = ASTRONAUT_LANDMARKS
    face_w = float(np.ptp(marks[_FACE, 0]))
    face_h = float(marks[8, 1] - marks[17:27, 1].min())  # brow to chin
    cx = float(marks[_FACE, 0].mean())
    x0, x1 = int(max(cx - 1.45 * face_w, 0)), int(min(cx + 1.45 * face_w, photo.shape[1]))
    y0, y1 = int(max(marks[19, 1] - 0.95 * face_h, 0)), int(min(marks[8, 1] + 0.9 * face_h, photo.shape[0]))
    scale = subject.face_height * height / face_h
    patch = cv2.resize(photo[y0:y1, x0:x1], None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    landmarks = (marks - np.array([x0, y0], np.float32)) * np.float32(scale)  # (68, 2)
    if subject.face_flip:
        patch = patch[:, ::-1]
        landmarks = landmarks.copy()
        landmarks[:, 0] = patch.shape[1] - 1 - landmarks[:, 0]
    head = ((patch.astype(np.float32) / 255.0) ** subject.face_gamma * 255.0) * np.array(subject.face_gain, np.float32)
    alpha = _bust_mask(patch.shape[:2], landmarks)
    face_mask = _hull_mask(patch.shape[:2], landmarks[_FACE])
    centre = landmarks[_FACE].mean(axis=0)
    target = np.array([stage_w / 2 + subject.face_offset[0] * width, stage_h / 2 + subject.face_offset[1] * height])
    origin = tuple(int(v) for v in np.round(target - centre))
    push = _mouth_push(patch.shape[:2], landmarks)
    rows, cols = np.nonzero(push)
    return Scene(
        stage=stage, head=np.ascontiguousarray(head, np.float32), alpha=alpha[..., None], origin=origin,
        landmarks=landmarks, face_mask=face_mask, mouth_push=push,
        mouth_roi=(int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1),
        mouth_gap_px=subject.mouth_gap * face_h * scale,
    )


def _background(subject: Subject, stage_w: int, stage_h: int) -> np.ndarray:
    """Crop of the subject's background photo at the stage's aspect, resized to `(stage_h, stage_w, 3)` float32."""
    photo = _photo(subject.background)
    ph, pw = photo.shape[:2]
    aspect = stage_w / stage_h
    crop_w = max(int(subject.bg_box[2] * min(pw, ph * aspect)), 8)
    crop_h = max(int(crop_w / aspect), 8)
    cx = int(subject.bg_box[0] * pw)
    cy = int(subject.bg_box[1] * ph)
    x0 = int(np.clip(cx - crop_w // 2, 0, pw - crop_w))
    y0 = int(np.clip(cy - crop_h // 2, 0, ph - crop_h))
    crop = photo[y0 : y0 + crop_h, x0 : x0 + crop_w]
    if subject.bg_flip:
        crop = crop[:, ::-1]
    interp = cv2.INTER_AREA if crop_w > stage_w else cv2.INTER_LINEAR
    stage = cv2.resize(np.ascontiguousarray(crop), (stage_w, stage_h), interpolation=interp).astype(np.float32)
    return stage * np.array(subject.bg_gain, np.float32)


def _bust_mask(shape: tuple[int, int], landmarks: np.ndarray) -> np.ndarray:
    """Feathered head-and-shoulders mask `(h, w)` float32, from the landmarks alone.

    A half-ellipse over the hair down to eye level, the jaw line pushed out a little (hair over
    the ears), and a trapezoid from the jaw down to the patch's bottom corners (neck, collar).
    """
    h, w = shape
    face = landmarks[_FACE]
    face_w = float(np.ptp(face[:, 0]))
    cx = float(face[:17, 0].mean())
    eye_y = float(landmarks[36:48, 1].mean())
    top = float(face[17:27, 1].min()) - 0.75 * (float(landmarks[8, 1]) - float(face[17:27, 1].min()))
    half_w = 0.7 * face_w
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (int(cx), int(eye_y)), (int(half_w), int(eye_y - top)), 0, 180, 360, 255, -1)  # upper half
    centre = face.mean(axis=0)
    jaw = (landmarks[:17] - centre) * np.array([1.12, 1.04], np.float32) + centre  # (17, 2)
    lower = np.concatenate([jaw, [[cx - half_w, eye_y], [cx + half_w, eye_y]]]).round().astype(np.int32)
    cv2.fillConvexPoly(mask, cv2.convexHull(lower), 255)
    neck = np.array([landmarks[4], landmarks[12], [w, h + 10], [0, h + 10]], np.float32).round().astype(np.int32)
    cv2.fillConvexPoly(mask, cv2.convexHull(neck), 255)  # hull: a mirrored face lists the jaw the other way
    return cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), max(0.025 * face_w, 1.0))


def _hull_mask(shape: tuple[int, int], points: np.ndarray) -> np.ndarray:
    """Filled convex hull of `points` `(K, 2)` as a `(h, w)` float32 0/1 mask."""
    mask = np.zeros(shape, np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(np.round(points).astype(np.int32)), 1)
    return mask.astype(np.float32)


def _mouth_push(shape: tuple[int, int], landmarks: np.ndarray) -> np.ndarray:
    """Weight `(h, w)` of the downward push that opens the mouth: 1 on lower lip and chin, 0 above the lips."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    mx, my = landmarks[_INNER_LIPS].mean(axis=0)
    half_w = float(np.linalg.norm(landmarks[54] - landmarks[48])) / 2
    face_h = float(landmarks[8, 1] - landmarks[17:27, 1].min())
    below = np.clip((yy - (my - 1)) / 3.0, 0, 1)
    lateral = np.exp(-0.5 * ((xx - mx) / (1.3 * half_w)) ** 2)
    fade = np.exp(-0.5 * (np.clip(yy - my - 0.25 * face_h, 0, None) / (0.2 * face_h)) ** 2)
    push = below * lateral * fade
    push[push < 1e-3] = 0.0
    return push.astype(np.float32)


@dataclass(frozen=True)
class Camera:
    """Per-frame view of the stage: the frame's centre looks at `centre`, magnified by `zoom`."""

    centre: np.ndarray  # (T, 2) stage pixels
    zoom: np.ndarray  # (T,) frame pixels per stage pixel

    def matrix(self, i: int, size: tuple[int, int]) -> np.ndarray:
        """2x3 affine from stage to frame pixels for frame `i` `(2, 3)`."""
        z = float(self.zoom[i])
        cx, cy = self.centre[i]
        return np.array([[z, 0, size[0] / 2 - z * cx], [0, z, size[1] / 2 - z * cy]], np.float32)

    @classmethod
    def smooth(cls, rng: np.random.Generator, n_frames: int, fps: float, size: tuple[int, int]) -> Camera:
        """A hand-held camera: slow sinusoidal pan (up to 8 % of the frame) and zoom breathing (0.96-1.16x)."""
        width, height = size
        t = np.arange(n_frames) / fps
        stage_centre = np.array([width, height]) * _STAGE_MARGIN / 2
        pan = np.zeros((n_frames, 2))
        for axis, extent in enumerate((width, height)):
            for amplitude, freq in ((rng.uniform(0.02, 0.06), rng.uniform(0.05, 0.25)),
                                    (rng.uniform(0.0, 0.02), rng.uniform(0.3, 0.8))):
                pan[:, axis] += amplitude * extent * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
        zoom = rng.uniform(1.02, 1.1) + rng.uniform(0.0, 0.06) * np.sin(2 * np.pi * rng.uniform(0.05, 0.2) * t
                                                                          + rng.uniform(0, 2 * np.pi))
        return cls(centre=stage_centre + pan, zoom=zoom)

    @classmethod
    def on_face(cls, scene: Scene, side: int, face_fraction: float) -> Camera:
        """One still view centred on the face so that its brow-to-chin height is `face_fraction` of `side`."""
        face_h = float(scene.landmarks[8, 1] - scene.landmarks[17:27, 1].min())
        centre = scene.face_centre + np.array(scene.origin, np.float32)
        return cls(centre=centre[None, :].astype(np.float64), zoom=np.array([face_fraction * side / face_h]))


@dataclass(frozen=True)
class Lighting:
    """What the light and the sensor add: exposure and white-balance drift, a moving side light, noise."""

    gain: np.ndarray  # (T, 3) per-channel multiplier (exposure x white balance)
    gradient: np.ndarray  # (T,) left-to-right brightness slope
    noise_sigma: float  # Gaussian sensor noise, grey levels

    @classmethod
    def drifting(cls, rng: np.random.Generator, n_frames: int, fps: float) -> Lighting:
        """Exposure +-2-8 % and white balance +-4 % drifting at 0.03-0.3 Hz, a side light, noise sigma 1-4."""
        t = np.arange(n_frames) / fps
        exposure = 1 + rng.uniform(0.02, 0.08) * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * t + rng.uniform(0, 6.3))
        balance = 1 + rng.uniform(-0.04, 0.04, 3)[None, :] * np.sin(2 * np.pi * rng.uniform(0.03, 0.15) * t
                                                                      + rng.uniform(0, 6.3))[:, None]
        gradient = rng.uniform(-0.12, 0.12) + rng.uniform(0, 0.05) * np.sin(2 * np.pi * rng.uniform(0.05, 0.2) * t)
        return cls(gain=exposure[:, None] * balance, gradient=gradient, noise_sigma=float(rng.uniform(1.0, 4.0)))


@dataclass(frozen=True)
class Region:
    """A weight map on a window of the head patch: where an edit acts, and nothing outside `roi`."""

    weight: np.ndarray  # (y1 - y0, x1 - x0) float32
    roi: tuple[int, int, int, int]  # y0, y1, x0, x1 in head-patch pixels

    @classmethod
    def around(cls, mask: np.ndarray, pad: float) -> Region:
        """The window holding `mask` > 0 grown by `pad` pixels (clipped to the patch)."""
        rows, cols = np.nonzero(mask > 1e-3)
        p = int(np.ceil(pad))
        y0, y1 = max(rows.min() - p, 0), min(rows.max() + 1 + p, mask.shape[0])
        x0, x1 = max(cols.min() - p, 0), min(cols.max() + 1 + p, mask.shape[1])
        return cls(np.ascontiguousarray(mask[y0:y1, x0:x1]), (int(y0), int(y1), int(x0), int(x1)))

    def blend(self, head: np.ndarray, window: np.ndarray) -> np.ndarray:
        """`head` `(h, w, 3)` with `window` (the ROI's new content) blended in by `weight`."""
        y0, y1, x0, x1 = self.roi
        out = head.copy()
        out[y0:y1, x0:x1] += self.weight[..., None] * (window - head[y0:y1, x0:x1])
        return out

    def shifted(self, matrix: np.ndarray) -> np.ndarray:
        """A 2x3 affine on patch coordinates re-expressed for output in this ROI's window `(2, 3)`."""
        out = np.array(matrix, np.float32)
        out[:, 2] -= (self.roi[2], self.roi[0])
        return out

    @property
    def size(self) -> tuple[int, int]:
        return self.roi[3] - self.roi[2], self.roi[1] - self.roi[0]  # (width, height) for OpenCV


@dataclass(frozen=True)
class FaceBlend:
    """Self-blended face (Shiohara & Yamasaki, CVPR 2022): the face re-blended onto itself with a mismatch.

    A copy of the face is rescaled about the face centre and shifted, colour-shifted and blurred,
    then alpha-blended back through the jaw-and-brow hull, grown or shrunk and feathered. The
    result carries a face swap's blending boundary and statistics mismatch without a second identity.
    """

    scale: float
    shift: tuple[float, float]  # pixels in the head patch
    colour_gain: tuple[float, float, float]
    brightness: float  # added grey levels
    blur_sigma: float
    grow: float  # mask dilation (> 0) or erosion (< 0) as a fraction of the face width
    feather: float  # mask blur sigma as a fraction of the face width
    opacity: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> FaceBlend:
        gains = 1 + rng.choice([-1, 1], 3) * rng.uniform(0.04, 0.12, 3)
        return cls(
            scale=float(rng.uniform(0.96, 1.04)),
            shift=(float(rng.uniform(-2, 2)), float(rng.uniform(-2, 2))),
            colour_gain=tuple(float(g) for g in gains),
            brightness=float(rng.uniform(-10, 10)),
            blur_sigma=float(rng.uniform(0.6, 1.6)),
            grow=float(rng.uniform(-0.04, 0.06)),
            feather=float(rng.uniform(0.02, 0.05)),
            opacity=float(rng.uniform(0.75, 1.0)),
        )

    def region(self, scene: Scene) -> Region:
        """The blend weight in the head patch, in a window padded for the blur of the source copy."""
        face_w = float(np.ptp(scene.landmarks[_FACE, 0]))
        radius = int(round(abs(self.grow) * face_w))
        mask = scene.face_mask
        if radius:
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
            mask = (cv2.dilate if self.grow > 0 else cv2.erode)(mask, kernel)
        mask = cv2.GaussianBlur(mask, (0, 0), max(self.feather * face_w, 0.5)) * np.float32(self.opacity)
        return Region.around(mask, 3 * self.blur_sigma + 2)

    def apply(self, head: np.ndarray, region: Region, centre: np.ndarray) -> np.ndarray:
        """`head` `(h, w, 3)` float32 with the mismatched copy blended in through `region`."""
        matrix = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), 0.0, self.scale)
        matrix[:, 2] += self.shift
        source = cv2.warpAffine(head, region.shifted(matrix), region.size, flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REFLECT)
        source = source * np.array(self.colour_gain, np.float32) + np.float32(self.brightness)
        return region.blend(head, cv2.GaussianBlur(source, (0, 0), self.blur_sigma))

    def meta(self) -> dict:
        return _rounded({"scale": self.scale, "shift": self.shift, "colour_gain": self.colour_gain,
                         "brightness": self.brightness, "blur_sigma": self.blur_sigma, "grow": self.grow,
                         "feather": self.feather, "opacity": self.opacity})


@dataclass(frozen=True)
class Upsample:
    """A generator's upsampling: the face region downsampled `factor` x, then a strided transposed convolution.

    The 1-D kernel is a bilinear tent (`2 factor - 1` taps) whose taps are perturbed as a learned
    kernel's would be, so the output phases receive unequal sums of taps: a periodic gain pattern
    of 6-15 % with period `factor` pixels, the checkerboard that puts peaks at multiples of
    1/`factor` cycles per pixel in the spectrum (Odena et al. 2016; Frank et al. 2020). The
    low-resolution pass also erases the sensor noise inside the region.
    """

    factor: int
    kernel: tuple[float, ...]  # separable, sums to `factor` so mean brightness is kept

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Upsample:
        factor = int(rng.choice([2, 4], p=[0.7, 0.3]))
        base = 1 - np.abs(np.arange(2 * factor - 1) - (factor - 1)) / factor  # bilinear tent: flat phase gains
        while True:
            taps = base * rng.uniform(0.75, 1.25, len(base))
            taps = taps * factor / taps.sum()
            depth = np.ptp(_phase_gains(taps, factor))
            if 0.06 <= depth <= 0.15:
                return cls(factor=factor, kernel=tuple(float(v) for v in taps))

    def apply(self, frame: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """`frame` `(H, W, 3)` float32 with the whole `factor`-cells inside `box` (x0, y0, x1, y1) regenerated.

        Returns the new frame and the box `(4,)` actually changed (None when the region is too small).
        """
        k = self.factor
        height, width = frame.shape[:2]
        x0, y0 = -(-int(max(np.floor(box[0]), 0)) // k) * k, -(-int(max(np.floor(box[1]), 0)) // k) * k
        x1 = x0 + max(int(min(np.ceil(box[2]), width)) - x0, 0) // k * k
        y1 = y0 + max(int(min(np.ceil(box[3]), height)) - y0, 0) // k * k
        if x1 - x0 < 4 * k or y1 - y0 < 4 * k:
            return frame, None
        region = frame[y0:y1, x0:x1]
        low = cv2.resize(region, ((x1 - x0) // k, (y1 - y0) // k), interpolation=cv2.INTER_AREA)
        sparse = np.zeros_like(region)
        sparse[::k, ::k] = low
        taps = np.array(self.kernel, np.float32)
        generated = cv2.sepFilter2D(sparse, -1, taps, taps, borderType=cv2.BORDER_REFLECT)
        inner = np.zeros(region.shape[:2], np.float32)
        edge = 2 * k
        inner[edge:-edge, edge:-edge] = 1
        weight = cv2.GaussianBlur(inner, (0, 0), k)[..., None]  # soft paste-back seam
        out = frame.copy()
        out[y0:y1, x0:x1] = region + weight * (generated - region)
        return out, np.array([x0, y0, x1, y1], np.float32)

    def meta(self) -> dict:
        return _rounded({"factor": self.factor, "kernel": self.kernel})


def _phase_gains(taps: np.ndarray, factor: int) -> np.ndarray:
    """Gain `(factor,)` a flat input receives at each output phase of a strided transposed convolution."""
    centre = len(taps) // 2
    return np.array([sum(taps[j] for j in range(len(taps)) if (j - centre) % factor == p) for p in range(factor)])


@dataclass(frozen=True)
class Warp:
    """Local geometric warping of the mouth or the eyes, driven by its own slow signal, never by the audio.

    Around the target a Gaussian-weighted magnification stretches or squeezes the region
    vertically (and, by `aspect`, horizontally) by up to `amplitude`; the amount follows a sum of
    sinusoids at 0.5-3 Hz with random phases, so the mouth moves in ways the speech does not.
    """

    target: Literal["mouth", "eyes"]
    amplitude: float
    freqs: tuple[float, ...]  # Hz
    phases: tuple[float, ...]  # rad
    aspect: float  # horizontal stretch relative to the vertical

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Warp:
        n = 3
        return cls(
            target="mouth" if rng.random() < 0.6 else "eyes",
            amplitude=float(rng.uniform(0.25, 0.45)),
            freqs=tuple(float(f) for f in rng.uniform(0.5, 3.0, n)),
            phases=tuple(float(p) for p in rng.uniform(0, 2 * np.pi, n)),
            aspect=float(rng.uniform(-0.4, 0.4)),
        )

    def at(self, t: float) -> Warp:
        """The same warp with its signal advanced by `t` seconds (a still taken mid-cycle)."""
        phases = tuple(p + 2 * np.pi * f * t for f, p in zip(self.freqs, self.phases))
        return Warp(self.target, self.amplitude, self.freqs, phases, self.aspect)

    def amount(self, t: float) -> float:
        """Signed stretch at time `t` seconds, within +-amplitude."""
        waves = [np.sin(2 * np.pi * f * t + p) for f, p in zip(self.freqs, self.phases)]
        return float(self.amplitude * sum(waves) / len(waves))

    def rigs(self, scene: Scene) -> list[_MagnifierRig]:
        """One precomputed magnifier per target (the mouth, or each eye)."""
        if self.target == "mouth":
            groups, reach = [scene.landmarks[_MOUTH]], 0.5
        else:
            groups, reach = [scene.landmarks[_RIGHT_EYE], scene.landmarks[_LEFT_EYE]], 0.75
        return [_MagnifierRig.build(pts.mean(axis=0), reach * float(np.ptp(pts[:, 0])), scene.head.shape[:2])
                for pts in groups]

    def apply(self, head: np.ndarray, rigs: list[_MagnifierRig], t: float) -> np.ndarray:
        """`head` `(h, w, 3)` float32 warped around each target at time `t`."""
        a = self.amount(t)
        for rig in rigs:
            head = rig.apply(head, a * self.aspect, a)
        return head

    def meta(self) -> dict:
        return _rounded({"target": self.target, "amplitude": self.amplitude, "freqs": self.freqs,
                         "phases": self.phases, "aspect": self.aspect})


@dataclass(frozen=True)
class _MagnifierRig:
    """A Gaussian-weighted magnifier about `centre`, its weights computed once per clip."""

    centre: np.ndarray  # (2,)
    dx: np.ndarray  # (h', w') float32 x - cx over the window
    dy: np.ndarray  # (h', w') float32 y - cy
    weight: np.ndarray  # (h', w') float32
    roi: tuple[int, int, int, int]  # y0, y1, x0, x1; beyond 3 radii the displacement is < 0.6 px and dropped

    @classmethod
    def build(cls, centre: np.ndarray, radius: float, shape: tuple[int, int]) -> _MagnifierRig:
        r = int(np.ceil(3 * radius))
        cx, cy = int(round(centre[0])), int(round(centre[1]))
        y0, y1, x0, x1 = max(cy - r, 0), min(cy + r + 1, shape[0]), max(cx - r, 0), min(cx + r + 1, shape[1])
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dx, dy = xx - np.float32(centre[0]), yy - np.float32(centre[1])
        weight = np.exp(-0.5 * (dx**2 + dy**2) / np.float32(radius**2)).astype(np.float32)
        return cls(np.asarray(centre, np.float32), dx, dy, weight, (y0, y1, x0, x1))

    def apply(self, head: np.ndarray, ax: float, ay: float) -> np.ndarray:
        """`head` magnified by (1 + ax, 1 + ay) at the centre, fading to identity."""
        y0, y1, x0, x1 = self.roi
        map_x = self.centre[0] + self.dx / (1 + np.float32(ax) * self.weight)
        map_y = self.centre[1] + self.dy / (1 + np.float32(ay) * self.weight)
        out = head.copy()
        out[y0:y1, x0:x1] = cv2.remap(head, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        return out


@dataclass(frozen=True)
class Flicker:
    """Per-frame jitter of the face region: independent shift and brightness every frame, as an unstable face swap.

    Real faces move smoothly; a frame-by-frame generator's face jumps by a pixel or two and
    pulses in brightness. The face is moved and rescaled in brightness inside its feathered
    hull, with fresh values each frame (white, not smooth, so temporal models can see it).
    """

    shifts: np.ndarray = field(repr=False)  # (T, 2) pixels in the head patch
    gains: np.ndarray = field(repr=False)  # (T,) brightness multipliers
    max_shift: float = 0.0
    brightness: float = 0.0

    @classmethod
    def sample(cls, rng: np.random.Generator, n_frames: int) -> Flicker:
        max_shift = float(rng.uniform(1.0, 3.0))
        brightness = float(rng.uniform(0.03, 0.08))
        return cls(
            shifts=rng.uniform(-max_shift, max_shift, (n_frames, 2)),
            gains=1 + rng.uniform(-brightness, brightness, n_frames),
            max_shift=max_shift,
            brightness=brightness,
        )

    def region(self, scene: Scene) -> Region:
        return Region.around(cv2.GaussianBlur(scene.face_mask, (0, 0), 2.0), self.max_shift + 2)

    def apply(self, head: np.ndarray, region: Region, i: int) -> np.ndarray:
        matrix = np.array([[1, 0, self.shifts[i, 0]], [0, 1, self.shifts[i, 1]]], np.float32)
        moved = cv2.warpAffine(head, region.shifted(matrix), region.size, flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT)
        return region.blend(head, moved * np.float32(self.gains[i]))

    def meta(self) -> dict:
        return _rounded({"max_shift": self.max_shift, "brightness": self.brightness})


@dataclass(frozen=True)
class VisualEdits:
    """The visual manipulations applied to one render; all None is an authentic render."""

    face_blend: FaceBlend | None = None
    upsample: Upsample | None = None
    warp: Warp | None = None
    flicker: Flicker | None = None

    def meta(self) -> dict[str, dict]:
        return {name: edit.meta() for name, edit in vars(self).items() if edit is not None}


@dataclass
class RenderedFrames:
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    face_boxes: np.ndarray  # (T, 4) float32 x0, y0, x1, y1 of the jaw-and-brow hull in frame pixels
    edit_boxes: np.ndarray  # (T, 4) float32 bounds of every pixel a visual edit may touch; NaN when unedited


def render_frames(
    scene: Scene,
    mouth_open: np.ndarray,
    camera: Camera,
    lighting: Lighting,
    size: tuple[int, int],
    fps: float,
    noise_seed: int,
    edits: VisualEdits = VisualEdits(),
) -> RenderedFrames:
    """Render one frame per entry of `mouth_open` `(T,)` (0 closed .. 1 open) at `size` (width, height).

    The mouth opens by pushing the lower lip and chin down with a smooth displacement field and
    darkening the gap (dlib's lip landmarks follow it); head-space edits come next, then the
    head is composited onto the stage, the camera crops it, the light drifts and the sensor
    adds noise; `Upsample` regenerates the face region of the finished frame. Noise comes
    from `noise_seed` alone, so renders that differ only in `edits` differ only where the
    edits act.
    """
    width, height = size
    n_frames = len(mouth_open)
    noise_rng = np.random.default_rng(noise_seed)
    frames = np.empty((n_frames, height, width, 3), np.uint8)
    face_boxes = np.empty((n_frames, 4), np.float32)
    edit_boxes = np.full((n_frames, 4), np.nan, np.float32)
    blend = edits.face_blend.region(scene) if edits.face_blend else None
    flicker = edits.flicker.region(scene) if edits.flicker else None
    rigs = edits.warp.rigs(scene) if edits.warp else []
    head_rois = [r.roi for r in (blend, flicker) if r is not None] + [rig.roi for rig in rigs]
    head_edit_box = _roi_corners(head_rois, scene.origin)  # (4, 2) stage pixels or None
    hull = scene.landmarks[_FACE] + np.array(scene.origin, np.float32)  # (27, 2) stage pixels
    xs = (np.arange(width, dtype=np.float32) / width - 0.5)[None, :, None]  # (1, W, 1)
    head_buffer, stage_buffer = scene.head.copy(), scene.stage.copy()
    for i, amount in enumerate(np.clip(mouth_open, 0, 1)):
        head = _open_mouth(scene, float(amount), head_buffer)
        if edits.warp is not None:
            head = edits.warp.apply(head, rigs, i / fps)
        if blend is not None:
            head = edits.face_blend.apply(head, blend, scene.face_centre)
        if flicker is not None:
            head = edits.flicker.apply(head, flicker, i)
        stage = _composite(scene, head, stage_buffer)
        matrix = camera.matrix(min(i, len(camera.zoom) - 1), size)
        frame = cv2.warpAffine(stage, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        frame *= lighting.gain[i].astype(np.float32) * (1 + np.float32(lighting.gradient[i]) * xs)  # (1, W, 3)
        frame += _sensor_noise(noise_rng, height, width, lighting.noise_sigma)
        face_boxes[i] = _bounds(_transform(hull, matrix))
        if head_edit_box is not None:
            edit_boxes[i] = _bounds(_transform(head_edit_box, matrix)) + np.array([-1, -1, 1, 1], np.float32)
        if edits.upsample is not None:
            w_box = face_boxes[i, 2] - face_boxes[i, 0]
            grown = face_boxes[i] + np.array([-0.12, -0.25, 0.12, 0.08], np.float32) * w_box
            frame, changed = edits.upsample.apply(frame, grown)
            if changed is not None:
                edit_boxes[i] = changed if np.isnan(edit_boxes[i, 0]) else _union(edit_boxes[i], changed)
        frames[i] = np.clip(frame, 0, 255, out=frame)
    return RenderedFrames(frames=frames, face_boxes=face_boxes, edit_boxes=edit_boxes)


def _sensor_noise(rng: np.random.Generator, height: int, width: int, sigma: float) -> np.ndarray:
    """One frame's sensor noise `(H, W, 3)` float32, plus 0.5 so the uint8 cast after it rounds to nearest.

    Full-resolution luminance noise plus half-resolution colour noise (demosaicing correlates
    neighbouring chroma), which is also about half the cost of drawing full-resolution RGB noise.
    """
    luma = rng.standard_normal((height, width, 1), np.float32)
    chroma = rng.standard_normal(((height + 1) // 2, (width + 1) // 2, 3), np.float32)
    noise = luma * np.float32(0.85 * sigma) + cv2.resize(chroma, (width, height), interpolation=cv2.INTER_LINEAR) * \
        np.float32(0.6 * sigma)
    noise += np.float32(0.5)
    return noise


def _open_mouth(scene: Scene, amount: float, out: np.ndarray) -> np.ndarray:
    """Write the head patch with the mouth `amount` (0..1) open into `out` `(h, w, 3)` and return it.

    `out` must start as a copy of `scene.head`; only the mouth window is ever rewritten, so one
    buffer serves a whole clip without copying the patch every frame.
    """
    y0, y1, x0, x1 = scene.mouth_roi
    gap = np.float32(scene.mouth_gap_px * amount)
    if gap < 0.3:
        out[y0:y1, x0:x1] = scene.head[y0:y1, x0:x1]
        return out
    xx, yy, push = scene.mouth_grid
    roi = cv2.remap(scene.head, xx, yy - gap * push, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if gap > 0.5:
        mx, my = scene.landmarks[_INNER_LIPS].mean(axis=0)
        half_w = float(np.linalg.norm(scene.landmarks[54] - scene.landmarks[48])) / 2
        cavity = np.zeros(roi.shape[:2], np.float32)
        cv2.ellipse(cavity, (int(round(mx)) - x0, int(round(my + gap / 2)) - y0),
                    (int(half_w * 0.8), max(int(gap / 2), 1)), 0, 0, 360, 1.0, -1)
        alpha = cv2.GaussianBlur(cavity, (5, 5), 0)[..., None] * np.float32(0.85)
        roi = roi * (1 - alpha) + _CAVITY_RGB * alpha
    out[y0:y1, x0:x1] = roi
    return out


def _composite(scene: Scene, head: np.ndarray, stage: np.ndarray) -> np.ndarray:
    """Alpha-blend `head` into `stage` (a copy of `scene.stage`) at the scene's origin, in place; return it.

    Only the paste window changes and it is fully rewritten, so one stage buffer serves a clip.
    """
    (sy, sx), (hy, hx) = scene.paste
    stage[sy, sx] = scene.stage_under_head + head[hy, hx] * scene.alpha[hy, hx]
    return stage


def _roi_corners(rois: list[tuple[int, int, int, int]], origin: tuple[int, int]) -> np.ndarray | None:
    """Corners `(4, 2)` in stage pixels of the box around head-patch windows (y0, y1, x0, x1); None if none."""
    if not rois:
        return None
    r = np.array(rois, np.float32)
    y0, y1, x0, x1 = r[:, 0].min(), r[:, 1].max(), r[:, 2].min(), r[:, 3].max()
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32) + np.array(origin, np.float32)


def _transform(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]  # (K, 2)


def _bounds(points: np.ndarray) -> np.ndarray:
    return np.array([*points.min(axis=0), *points.max(axis=0)], np.float32)  # (4,)


def _union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])], np.float32)


def _rounded(values: dict) -> dict:
    """JSON-friendly copy of `values` with floats rounded to 4 decimals, so manifests stay short and stable."""
    def fix(v: object) -> object:
        if isinstance(v, (tuple, list, np.ndarray)):
            return [fix(x) for x in v]
        if isinstance(v, (float, np.floating)):
            return round(float(v), 4)
        if isinstance(v, np.integer):
            return int(v)
        return v

    return {k: fix(v) for k, v in values.items()}


# ---------------------------------------------------------------- encoding and compression


@dataclass(frozen=True)
class CompressionLevel:
    """A parsed compression name: `none`, `crf<N>`, `crf<N>_half`, optionally `x<passes>` (e.g. `crf30x2`)."""

    name: str
    crf: int | None  # None: the file stays the camera original
    half: bool  # halve width and height (once, before the first pass)
    passes: int

    @classmethod
    def parse(cls, name: str) -> CompressionLevel:
        match = _LEVEL_PATTERN.match(name)
        if not match:
            raise ValueError(f"unknown compression level {name!r}; expected none, crfN, crfN_half, crfNx2, ...")
        crf, half, passes = match.groups()
        if crf is None:
            return cls(name, None, False, 1)
        if not 0 <= int(crf) <= 51:
            raise ValueError(f"CRF must be 0-51, got {name!r}")
        return cls(name, int(crf), half is not None, int(passes or 1))

    @property
    def jpeg_quality(self) -> int:
        """JPEG quality for images at this level: crf23 -> 87, crf30 -> 70, crf38 -> 50 (100 - 2.5 (crf - 18))."""
        return 95 if self.crf is None else int(np.clip(round(100 - 2.5 * (self.crf - _BASE_CRF)), 10, 95))


def encode_mp4(
    frames: np.ndarray, audio: np.ndarray | None, fps: float | Fraction, crf: int = _BASE_CRF,
    sr: int = SAMPLE_RATE, audio_bitrate: int = _AUDIO_BITRATE,
) -> bytes:
    """H.264 (yuv420p, `_X264_OPTIONS` so bytes are reproducible) + AAC mono in MP4, in memory.

    frames: `(T, H, W, 3)` uint8 RGB with even H and W; audio: float32 `(N,)` at `sr`.
    """
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        video.width, video.height = frames.shape[2], frames.shape[1]
        video.pix_fmt = "yuv420p"
        video.options = _X264_OPTIONS | {"crf": str(crf)}
        packets: list[av.Packet] = []
        audio_stream = None
        if audio is not None:
            audio_stream = out.add_stream("aac", rate=sr)
            audio_stream.layout = "mono"
            audio_stream.bit_rate = audio_bitrate
            audio_stream.options = {"aac_coder": "fast"}  # 4x faster than the default two-loop search
        for rgb in frames:
            packets.extend(video.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")))
        packets.extend(video.encode())
        if audio_stream is not None:
            packets.extend(encode_audio_packets(audio_stream, audio, sr))
        packets.sort(key=lambda p: float((p.dts if p.dts is not None else 0) * p.time_base))
        for packet in packets:
            out.mux(packet)
    return buf.getvalue()


def decode_video(data: bytes, sr: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray | None, Fraction]:
    """Every frame `(T, H, W, 3)` uint8 RGB, the audio as float32 mono `(N,)` at `sr` (None without an
    audio stream) and the frame rate: what a re-encode needs."""
    frames: list[np.ndarray] = []
    chunks: list[np.ndarray] = []
    with av.open(io.BytesIO(data)) as container:
        video = container.streams.video[0]
        fps = video.average_rate or Fraction(25)
        streams = [video] + list(container.streams.audio[:1])
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sr)
        for packet in container.demux(*streams):
            for frame in packet.decode():
                if isinstance(frame, av.VideoFrame):
                    frames.append(frame.to_ndarray(format="rgb24"))
                else:
                    chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
        has_audio = bool(container.streams.audio)
        if has_audio:
            chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
    audio = np.concatenate(chunks).astype(np.float32) if chunks else (np.zeros(0, np.float32) if has_audio else None)
    return np.stack(frames), audio, Fraction(fps)


def compress_video(data: bytes, level: str) -> bytes:
    """Simulate a social-media re-upload of an MP4/any FFmpeg video: `level` as in `CompressionLevel`.

    `none` returns `data` unchanged. Otherwise the video is decoded, halved in resolution once
    for `_half` levels (INTER_AREA, even sizes), and re-encoded to H.264 at the CRF with AAC at
    48 kb/s, `passes` times (`crf30x2` = uploaded, downloaded and uploaded again). The
    frame rate and the audio's alignment with the picture are kept.
    """
    spec = CompressionLevel.parse(level)
    if spec.crf is None:
        return data
    for i in range(spec.passes):
        frames, audio, fps = decode_video(data)
        if spec.half and i == 0:
            frames = half_size(frames)
        data = encode_mp4(frames, audio, fps, spec.crf, audio_bitrate=_COMPRESSED_AUDIO_BITRATE)
    return data


def half_size(frames: np.ndarray) -> np.ndarray:
    """Frames `(T, H, W, 3)` downscaled to half size rounded to even sides `(T, H', W', 3)`, as a platform would."""
    height, width = frames.shape[1:3]
    new_w, new_h = max(width // 2 // 2 * 2, 2), max(height // 2 // 2 * 2, 2)
    return np.stack([cv2.resize(f, (new_w, new_h), interpolation=cv2.INTER_AREA) for f in frames])


def encode_image(rgb: np.ndarray, fmt: Literal["png", "jpeg"], quality: int = 95) -> bytes:
    """One RGB image `(H, W, 3)` as PNG or baseline JPEG (4:2:0) bytes."""
    bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    if fmt == "png":
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    elif fmt == "jpeg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    else:
        raise ValueError(f"unknown image format {fmt!r}; known: png, jpeg")
    if not ok:
        raise ValueError(f"could not encode a {rgb.shape} image as {fmt}")
    return buf.tobytes()


def compress_image(data: bytes, level: str) -> bytes:
    """An image file's bytes after a simulated re-upload: `none` unchanged, else JPEG at `jpeg_quality`, `passes` times.

    `_half` levels halve width and height once (INTER_AREA) before the first pass.
    """
    spec = CompressionLevel.parse(level)
    if spec.crf is None:
        return data
    for i in range(spec.passes):
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError("compress_image: not an image OpenCV can decode")
        if spec.half and i == 0:
            bgr = cv2.resize(bgr, (max(bgr.shape[1] // 2, 1), max(bgr.shape[0] // 2, 1)), interpolation=cv2.INTER_AREA)
        data = encode_image(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), "jpeg", spec.jpeg_quality)
    return data
