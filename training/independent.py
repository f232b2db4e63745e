"""A second, independent benchmark generator, for testing only: media made another way than `training.benchmark`.

A detector that learned one generator's traces can score well on that generator's test split
and still call most authentic media from anywhere else fake (issue 17). This module shares no
rendering, compositing, camera, speech or manipulation code with `training.benchmark`,
`training.synth_video` or `training.synth_audio`, so `spectrashield eval --cross-manifest`
can report a cross-generator column beside the in-distribution one, the way FaceForensics++ ->
Celeb-DF is reported. It is never used for training or threshold fitting: every entry it writes
has split `test` and `source="independent"`.

How it differs from the training generator:

| | training generator | this one |
| --- | --- | --- |
| faces | the astronaut's head, one crop, colour gain, mirror | the astronaut with other crops, in-plane roll, Lab colour transfer to a skin tone, mirror; and scikit-image's LFW faces (other people), upsampled, colourised and put on a drawn bust |
| face size, framing | large, near the centre, landscape | 48 px brow-to-chin up to 45 % of the short side, anywhere in the frame, landscape and portrait |
| scene | a sharp crop of a photograph | drawn rooms (wall, floor, window, picture), strongly defocused photographs, tinted perspective textures |
| camera | sinusoidal affine pan and zoom, per-channel gain drift, Gaussian noise | hand-held rotation (Ornstein-Uhlenbeck yaw/pitch/roll/zoom) as a homography, lens blur, vignetting, white balance, signal-dependent noise, a tone curve; some clips on a tripod |
| mouth | lower lip and chin pushed, cavity colour | jaw-drop remap in the mouth's own frame, shaded cavity with teeth, driven by the speech's RMS envelope |
| speech | skewed-sawtooth source, Gaussian formant bumps per syllable | Rosenberg glottal pulses (jitter, shimmer, aspiration), 5-formant all-pole cascade with coarticulated tracks, fricatives, plosives, nasals, a Fujisaki-like pitch contour, room reverb and noise, at 8-48 kHz |
| codecs | H.264 + AAC in MP4 at CRF 18-38; PNG/JPEG; WAV/FLAC | H.264, HEVC, VP9 + Opus in WebM, double compression across codecs; JPEG 55-95, double JPEG, PNG; WAV, FLAC, MP3, Ogg/Opus |
| manipulations | face_blend, upsample, warp, flicker, vocoder, splice, av_shift, av_swap | `face_swap_poisson` (another person's face, landmark-aligned per frame with jitter, `cv2.seamlessClone`), `audio_swap` (another speaker saying something else), `mouth_freeze` (the mouth stops while speech goes on), `av_offset` (audio leads or lags 200-600 ms), `audio_resynth` (LPC vocoder or phase-randomised STFT) |

Images: authentic portraits, Poisson face swaps on stills, and authentic faceless photographs
(coffee, cat, rocket, cameraman) so "faceless authentic photos are never fake" can be measured.
Audio-only: authentic speech and `audio_resynth`. Every file's generator settings (face height
in pixels, position, resolution, codec, CRF, sample rate, the mouth opening per frame...) are
in its `meta`. File names say nothing about the label.

Modality labels: `face_swap_poisson` is visual; `audio_resynth` is audio; `audio_swap`,
`mouth_freeze` and `av_offset` are audio-visual only (each stream alone is authentic; the voice of
`audio_swap` is bona fide speech of another speaker). `meta.av_offset_ms` > 0 means the audio
leads the picture, as in `training.benchmark`.

Deterministic: each file's randomness comes from `SeedSequence((seed, index, stream))`, so the
same seed and counts give the same manifest and the same files (single-threaded encoders).
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Literal

import av
import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from skimage import data as skdata
from tqdm import tqdm

from training.manifest import ManifestEntry, ModalityLabels, read_manifest, write_manifest

__all__ = [
    "INDEPENDENT_FAMILIES",
    "MANIFEST_NAME",
    "SOURCE",
    "VIDEO_FAMILIES",
    "IndependentConfig",
    "ItemPlan",
    "Rendered",
    "Speaker",
    "generate_independent",
    "lpc_resynthesis",
    "main",
    "mouth_track",
    "phase_resynthesis",
    "plan_items",
    "render_item",
    "speak",
]

SOURCE = "independent"
MANIFEST_NAME = "manifest.jsonl"
VIDEO_FAMILIES = ("face_swap_poisson", "audio_swap", "mouth_freeze", "av_offset")
INDEPENDENT_FAMILIES = (*VIDEO_FAMILIES, "audio_resynth")
FACELESS_PHOTOS = ("coffee", "chelsea", "rocket", "camera")
AV_OFFSET_RANGE_MS = (200.0, 600.0)
FPS = 25

# One cycle of each kind's labels; files take them in order, so small counts still cover every family.
_VIDEO_CYCLE: tuple[str | None, ...] = (
    None, "face_swap_poisson", None, "av_offset", None, "mouth_freeze", None, "audio_swap",
)
_IMAGE_CYCLE = ("face", "face_swap_poisson", "faceless", "face", "face_swap_poisson", "faceless", "face",
                "face_swap_poisson")
_AUDIO_CYCLE: tuple[str | None, ...] = (None, "audio_resynth")
# (codec, container); "x2" = encoded once with H.264 at a high quality, decoded, encoded again.
_VIDEO_CODECS = ("h264", "vp9", "h264", "hevc", "h264x2", "vp9x2")
_IMAGE_FORMATS = ("jpeg", "jpeg", "png", "jpegx2")
_AUDIO_FORMATS = ("wav", "flac", "mp3", "ogg")
_LFW_MAX_FACE_PX = 110.0  # a 25 px LFW face is not upsampled further than this (brow to chin)
_ASTRONAUT_MAX_UPSCALE = 3.2
_SPEECH_MARGIN_S = 0.7  # utterances are this much longer on each side: room for an AV offset


class IndependentConfig(BaseModel):
    """Everything that determines an independent benchmark; validated before any file is made."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_videos: int = Field(ge=0)
    n_images: int = Field(ge=0)
    n_audio: int = Field(ge=0)
    seed: int = 0
    seconds: tuple[float, float] = (2.0, 3.0)
    resolutions: tuple[tuple[int, int], ...] = (
        (640, 360), (854, 480), (960, 540), (1280, 720), (360, 640), (720, 1280),
    )
    image_sizes: tuple[tuple[int, int], ...] = ((640, 480), (800, 600), (1024, 768), (720, 960), (1280, 720))
    video_sample_rates: tuple[int, ...] = (16_000, 22_050, 44_100, 48_000)
    audio_sample_rates: tuple[int, ...] = (8_000, 16_000, 22_050, 44_100)
    min_face_px: float = Field(48.0, ge=16.0)
    real_speech: tuple[str, ...] = Field(
        (), description="real recordings (absolute paths) that replace the formant voices: each person speaks "
        "from its own place in this list; keep these speakers out of every training set",
    )
    max_face_fraction: float = Field(0.45, gt=0.0, le=0.8, description="largest face height / shorter frame side")

    @field_validator("seconds")
    @classmethod
    def _seconds(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.5 <= v[0] <= v[1] <= 30:
            raise ValueError(f"seconds must satisfy 0.5 <= min <= max <= 30, got {v}")
        return v

    @field_validator("resolutions", "image_sizes")
    @classmethod
    def _sizes(cls, v: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
        if not v or any(w < 160 or h < 160 or w % 2 or h % 2 for w, h in v):
            raise ValueError(f"sizes must be even and at least 160x160, got {v}")
        return v


# ---- real faces ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FacePhoto:
    """A real face at its native resolution with dlib's 68 landmarks `(68, 2)`."""

    name: str
    rgb: np.ndarray  # (h, w, 3) uint8 (LFW: grey repeated)
    landmarks: np.ndarray  # (68, 2) float32


@lru_cache(maxsize=1)
def _shape_predictor():  # dlib.shape_predictor
    import dlib

    from media.faces import landmark_model_path

    return dlib.shape_predictor(str(landmark_model_path()))


def _landmarks(grey: np.ndarray, rect: tuple[int, int, int, int]) -> np.ndarray:
    import dlib

    shape = _shape_predictor()(np.ascontiguousarray(grey), dlib.rectangle(*rect))
    return np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], np.float32)


@lru_cache(maxsize=1)
def astronaut_face() -> FacePhoto:
    rgb = skdata.astronaut()
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return FacePhoto("astronaut", rgb, _landmarks(grey, (175, 76, 265, 166)))  # HOG's box on this photo


@lru_cache(maxsize=1)
def _lfw_faces() -> np.ndarray:
    return skdata.lfw_subset()[:100]  # (100, 25, 25) float64 in [0, 1]; the other 100 are not faces


@lru_cache(maxsize=128)
def lfw_face(index: int) -> FacePhoto:
    """LFW face `index` (0-99), upsampled x4 (bicubic) to 100 px; landmarks inside the crop."""
    import dlib

    grey = cv2.resize((_lfw_faces()[index] * 255).round().astype(np.uint8), (100, 100), interpolation=cv2.INTER_CUBIC)
    padded = cv2.copyMakeBorder(grey, 50, 50, 50, 50, cv2.BORDER_REPLICATE)
    found = dlib.get_frontal_face_detector()(padded, 1)
    rect = (0, 9, 84, 93)  # the mean detection over the set, for the few HOG misses
    if len(found):
        r = found[0]
        rect = (r.left() - 50, r.top() - 50, r.right() - 50, r.bottom() - 50)
    marks = _landmarks(padded, tuple(v + 50 for v in rect)) - 50.0
    return FacePhoto(f"lfw:{index}", np.repeat(grey[..., None], 3, axis=2), marks)


# Skin tones as CIE L*a*b* (OpenCV float ranges: L 0-100, a/b about -127..127).
_SKIN_LAB = ((74.0, 12.0, 17.0), (66.0, 14.0, 21.0), (57.0, 16.0, 25.0), (46.0, 15.0, 22.0), (35.0, 12.0, 17.0))
_HAIR_RGB = ((25, 20, 18), (70, 45, 30), (120, 85, 50), (160, 150, 140), (190, 160, 110))
_CLOTHES_RGB = ((30, 50, 90), (120, 30, 35), (40, 40, 45), (200, 200, 195), (60, 95, 60), (150, 110, 70))


def _face_geometry(marks: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(centre between eyes and mouth `(2,)`, face width, brow-to-chin height)."""
    eyes = marks[36:48].mean(axis=0)
    mouth = marks[48:68].mean(axis=0)
    return (eyes + mouth) / 2, float(np.ptp(marks[0:17, 0])), float(marks[8, 1] - marks[17:27, 1].min())


def _to_lab(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.clip(rgb, 0, 255).astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)


def _from_lab(lab: np.ndarray) -> np.ndarray:
    return np.clip(cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_Lab2RGB) * 255.0, 0, 255)


def _hull(shape: tuple[int, int], points: np.ndarray) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(np.round(points).astype(np.int32)), 1)
    return mask.astype(np.float32)


@dataclass(frozen=True)
class Identity:
    """One person of the benchmark (a `group`): face, skin, hair, clothes, voice and usual backdrop."""

    group: str
    face: str  # "astronaut" or "lfw:<index>"
    skin: int  # index into _SKIN_LAB
    mirror: bool
    hair: int
    clothes: int
    crop: float  # astronaut: how much of the shoulders is kept beyond 1.3 face widths from the centre
    transfer: float  # strength of the skin colour transfer (astronaut)
    speaker: Speaker
    backdrop: str  # "room", "photo:<name>" or "texture:<name>"

    @property
    def is_lfw(self) -> bool:
        return self.face.startswith("lfw:")


@dataclass
class Sprite:
    """A head-and-shoulders cut-out: colour `(h, w, 3)` float32 0-255, alpha `(h, w)`, landmarks `(68, 2)`."""

    rgb: np.ndarray
    alpha: np.ndarray
    landmarks: np.ndarray

    @property
    def face_height(self) -> float:
        return _face_geometry(self.landmarks)[2]

    def scaled(self, factor: float) -> Sprite:
        h, w = self.alpha.shape
        size = (max(int(round(w * factor)), 8), max(int(round(h * factor)), 8))
        interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
        sx, sy = size[0] / w, size[1] / h
        return Sprite(
            np.clip(cv2.resize(self.rgb, size, interpolation=interp), 0, 255),
            np.clip(cv2.resize(self.alpha, size, interpolation=cv2.INTER_LINEAR), 0, 1),
            self.landmarks * np.array([sx, sy], np.float32),
        )


def build_sprite(identity: Identity) -> Sprite:
    """The identity's cut-out at the face photo's native resolution."""
    sprite = _lfw_sprite(identity) if identity.is_lfw else _astronaut_sprite(identity)
    if identity.mirror:
        w = sprite.alpha.shape[1]
        marks = sprite.landmarks.copy()
        marks[:, 0] = w - 1 - marks[:, 0]
        sprite = Sprite(np.ascontiguousarray(sprite.rgb[:, ::-1]), np.ascontiguousarray(sprite.alpha[:, ::-1]), marks)
    return sprite


@lru_cache(maxsize=1)
def _astronaut_matte() -> np.ndarray:
    """The astronaut's head, neck ring and suit cut from the photo's background `(512, 512)` float32:
    GrabCut at half resolution (face and chest sure foreground, left and top edges sure background),
    the largest component, holes filled, feathered."""
    photo = astronaut_face()
    small = cv2.resize(cv2.cvtColor(photo.rgb, cv2.COLOR_RGB2BGR), (256, 256), interpolation=cv2.INTER_AREA)
    marks = photo.landmarks / 2
    mask = np.full((256, 256), cv2.GC_PR_BGD, np.uint8)
    mask[:, :30], mask[:10] = cv2.GC_BGD, cv2.GC_BGD
    mask[20:250, 60:210] = cv2.GC_PR_FGD
    cv2.fillConvexPoly(mask, cv2.convexHull(np.round(marks[:27]).astype(np.int32)), cv2.GC_FGD)
    mask[150:, 100:165] = cv2.GC_FGD
    cv2.setRNGSeed(17)  # GrabCut's GMMs start from k-means: the same matte in every process
    cv2.grabCut(small, mask, None, np.zeros((1, 65)), np.zeros((1, 65)), 5, cv2.GC_INIT_WITH_MASK)
    fg = np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=4)
    fg = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8) if count > 1 else fg
    holes = fg.copy()
    cv2.floodFill(holes, np.zeros((258, 258), np.uint8), (0, 0), 1)
    fg = fg | (1 - holes)
    alpha = cv2.resize(fg.astype(np.float32), (512, 512), interpolation=cv2.INTER_LINEAR)
    return cv2.GaussianBlur(alpha, (0, 0), 1.2)


def _astronaut_sprite(identity: Identity) -> Sprite:
    photo = astronaut_face()
    marks = photo.landmarks
    centre, fw, fh = _face_geometry(marks)
    chin = float(marks[8, 1])
    x0 = int(max(centre[0] - (1.3 + identity.crop) * fw, 0))
    x1 = int(min(centre[0] + (1.3 + identity.crop) * fw, photo.rgb.shape[1]))
    y1 = int(min(chin + 1.76 * fh, photo.rgb.shape[0]))  # the shoulders, above the helmet on her lap
    rgb = photo.rgb[:y1, x0:x1].astype(np.float32)
    alpha = _astronaut_matte()[:y1, x0:x1].copy()
    marks = marks - np.array([x0, 0], np.float32)
    h, w = rgb.shape[:2]
    centre, fw, fh = _face_geometry(marks)
    # Half-width kept per row: the head's above the chin, the shoulders' below (not the props beside her).
    reach = np.interp(np.arange(h), [chin, chin + 0.4 * fh], [1.0 * fw, min(1.7 * fw, 1.3 * fw + identity.crop * fw)])
    alpha *= np.clip((reach[:, None] - np.abs(np.arange(w)[None, :] - centre[0])) / (0.15 * fw), 0, 1)

    # Colour transfer of the skin (Reinhard-style mean shift in Lab), weighted by a soft skin mask.
    lab = _to_lab(rgb)
    skin = _hull((h, w), np.concatenate([marks[0:17], marks[17:27] - [0, 0.25 * fh]]))
    skin = cv2.GaussianBlur(skin, (0, 0), 0.08 * fw)
    inside = skin > 0.5
    target = np.array(_SKIN_LAB[identity.skin], np.float32)
    shift_lab = (target - lab[inside].mean(axis=0)) * identity.transfer
    lab = lab + shift_lab * np.maximum(skin, 0.35 * alpha)[..., None]  # neck and ears follow a little
    return Sprite(_from_lab(lab), alpha, marks)


def _texture(name: str, size: tuple[int, int], rng: np.random.Generator, streaks: float = 0.0) -> np.ndarray:
    """A grey texture crop `(h, w)` float32 with mean 1, optionally smeared vertically (hair strands)."""
    tex = _photo(name)[..., 0].astype(np.float32)
    w, h = size
    y0, x0 = int(rng.integers(0, 512 - 128)), int(rng.integers(0, 512 - 128))
    tex = cv2.resize(tex[y0 : y0 + 128, x0 : x0 + 128], (w, h), interpolation=cv2.INTER_LINEAR)
    if streaks:
        tex = cv2.GaussianBlur(tex, (0, 0), sigmaX=0.5, sigmaY=streaks)
    return tex / (tex.mean() + 1e-6)


def _lfw_sprite(identity: Identity) -> Sprite:
    """An LFW face (another person) colourised and set on a painted bust: textured hair around the
    face, a shaded neck, shoulders in a fabric-textured top."""
    photo = lfw_face(int(identity.face.split(":")[1]))
    rng = np.random.default_rng(int(identity.face.split(":")[1]) * 7 + identity.hair)
    centre, fw, fh = _face_geometry(photo.landmarks)
    cw, ch = int(3.0 * fw), int(3.4 * fh)
    origin = np.array([cw / 2 - centre[0], 0.34 * ch - centre[1]], np.float32)
    marks = photo.landmarks + origin
    centre = centre + origin
    chin, brow = float(marks[8, 1]), float(marks[17:27, 1].min())
    skin_lab = np.array(_SKIN_LAB[identity.skin], np.float32)
    skin_rgb = _from_lab(skin_lab[None, None, :])[0, 0]
    yy, xx = np.mgrid[0:ch, 0:cw].astype(np.float32)
    canvas = np.zeros((ch, cw, 3), np.float32)
    alpha = np.zeros((ch, cw), np.float32)

    def paint(mask: np.ndarray, colour: np.ndarray) -> None:
        m = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 1.0)[..., None]
        canvas[:] = canvas * (1 - m) + colour * m
        alpha[:] = np.maximum(alpha, m[..., 0])

    # Shoulders and chest: sloping shoulders, shaded like a cylinder, with a fabric texture.
    top = chin + 0.22 * fh
    half = (1.4 + 0.3 * rng.random()) * fw
    body = np.array([[centre[0] - 0.45 * fw, top], [centre[0] + 0.45 * fw, top],
                     [centre[0] + 0.95 * half, top + 0.3 * fh], [centre[0] + half, top + 0.7 * fh], [centre[0] + half, ch],
                     [centre[0] - half, ch], [centre[0] - half, top + 0.7 * fh], [centre[0] - 0.95 * half, top + 0.3 * fh]])
    shoulders = np.zeros((ch, cw), np.uint8)
    cv2.fillPoly(shoulders, [np.round(body).astype(np.int32)], 1)
    shoulders = (cv2.GaussianBlur(shoulders.astype(np.float32), (0, 0), 0.12 * fw) > 0.5).astype(np.uint8)  # rounded
    cylinder = 0.7 + 0.3 * np.cos(np.clip((xx - centre[0]) / half, -1, 1) * np.pi / 2)
    cloth = np.array(_CLOTHES_RGB[identity.clothes], np.float32) * cylinder[..., None]
    cloth *= (0.9 + 0.1 * _texture("grass", (cw, ch), rng, streaks=0.05 * fh))[..., None]
    paint(shoulders, cloth)
    # Neck and the back of the head: skin, darker under the jaw.
    head = np.zeros((ch, cw), np.uint8)
    nw = 0.3 * fw
    cv2.rectangle(head, (int(centre[0] - nw), int(chin - 0.5 * fh)), (int(centre[0] + nw), int(top + 0.25 * fh)), 1, -1)
    cv2.ellipse(head, (int(centre[0]), int(centre[1] - 0.15 * fh)), (int(0.56 * fw), int(0.72 * fh)), 0, 0, 360, 1, -1)
    under = np.clip((yy - chin) / (0.3 * fh), 0, 1)
    round_ = 0.8 + 0.2 * np.cos(np.clip((xx - centre[0]) / (0.6 * fw), -1, 1) * np.pi / 2)
    paint(head, skin_rgb * (0.85 - 0.3 * under * (yy < top + 0.3 * fh))[..., None] * round_[..., None])
    # Hair: a textured cap framing the face (some people are drawn without: shaved or bald).
    if rng.random() < 0.85:
        hair = np.zeros((ch, cw), np.uint8)
        length = rng.uniform(0.2, 0.9)
        cv2.ellipse(hair, (int(centre[0]), int(brow + 0.15 * fh)), (int(0.64 * fw), int(0.78 * fh)), 0, 180, 360, 1, -1)
        cv2.rectangle(hair, (int(centre[0] - 0.64 * fw), int(brow + 0.15 * fh)),
                      (int(centre[0] + 0.64 * fw), int(brow + length * fh)), 1, -1)
        strands = _texture("grass", (cw, ch), rng, streaks=0.15 * fh)
        colour = np.array(_HAIR_RGB[identity.hair], np.float32)
        paint(hair, colour * np.clip(0.3 + 0.7 * strands ** 1.5, 0.2, 1.8)[..., None])

    # Colourise the grey face: L from the photo, a/b from the skin tone, redder lips.
    grey = photo.rgb[..., 0].astype(np.float32) / 255.0
    lab = np.zeros((*grey.shape, 3), np.float32)
    lab[..., 0] = np.clip((grey - grey.mean()) * 95.0 + skin_lab[0], 0, 100)
    lips = cv2.GaussianBlur(_hull(grey.shape, photo.landmarks[48:60]), (0, 0), 1.5)
    lab[..., 1] = skin_lab[1] + 14.0 * lips
    lab[..., 2] = skin_lab[2] - 4.0 * lips
    face_rgb = _from_lab(lab)
    face_alpha = np.zeros(grey.shape, np.uint8)
    pc, pfw, pfh = _face_geometry(photo.landmarks)
    axes = (int(min(0.55 * pfw, pc[0] - 4, 96 - pc[0])), int(min(0.68 * pfh, pc[1] - 0.05 * pfh - 4, 96 - pc[1])))
    cv2.ellipse(face_alpha, (int(pc[0]), int(pc[1] - 0.05 * pfh)), axes, 0, 0, 360, 255, -1)
    face_alpha = cv2.GaussianBlur(face_alpha.astype(np.float32) / 255.0, (0, 0), 3.0)
    ox, oy = int(round(origin[0])), int(round(origin[1]))
    h, w = grey.shape
    ys, xs = slice(max(oy, 0), min(oy + h, ch)), slice(max(ox, 0), min(ox + w, cw))
    sub = (slice(ys.start - oy, ys.stop - oy), slice(xs.start - ox, xs.stop - ox))
    a = face_alpha[sub][..., None]
    canvas[ys, xs] = canvas[ys, xs] * (1 - a) + face_rgb[sub] * a
    alpha[ys, xs] = np.maximum(alpha[ys, xs], face_alpha[sub])
    canvas = cv2.GaussianBlur(canvas, (0, 0), 0.7)  # painted edges no sharper than the upsampled face
    return Sprite(canvas, cv2.GaussianBlur(alpha, (0, 0), 0.8), marks.astype(np.float32))


# ---- the mouth ----------------------------------------------------------------------------------


class MouthRig:
    """Opens a sprite's mouth: the jaw drops (a remap below the lip line, in the mouth's own frame)
    and a shaded cavity with a strip of teeth appears. Built once per sprite, applied per frame."""

    def __init__(self, sprite: Sprite) -> None:
        marks = sprite.landmarks
        _, _, fh = _face_geometry(marks)
        left, right = marks[48], marks[54]
        self.angle = math.atan2(float(right[1] - left[1]), float(right[0] - left[0]))
        self.centre = marks[60:68].mean(axis=0)
        self.half_w = float(np.linalg.norm(right - left)) / 2
        self.max_drop = 0.11 * fh
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        chin_v = float((marks[8] - self.centre) @ np.array([-sin, cos]))
        h, w = sprite.alpha.shape
        reach = np.array([1.7 * self.half_w, chin_v + 0.5 * fh])
        corners = np.array([[-reach[0], -0.2 * fh], [reach[0], -0.2 * fh], [reach[0], reach[1]], [-reach[0], reach[1]]])
        rot = np.array([[cos, -sin], [sin, cos]])
        pts = corners @ rot.T + self.centre
        self.x0, self.y0 = int(max(math.floor(pts[:, 0].min()), 0)), int(max(math.floor(pts[:, 1].min()), 0))
        self.x1, self.y1 = int(min(math.ceil(pts[:, 0].max()) + 1, w)), int(min(math.ceil(pts[:, 1].max()) + 1, h))
        yy, xx = np.mgrid[self.y0 : self.y1, self.x0 : self.x1].astype(np.float32)
        dx, dy = xx - self.centre[0], yy - self.centre[1]
        self.u = dx * cos + dy * sin  # along the lips
        self.v = -dx * sin + dy * cos  # down the face
        self.xx, self.yy = xx, yy
        self.sin, self.cos = sin, cos
        side = np.clip(1 - (self.u / (1.7 * self.half_w)) ** 2, 0, 1) ** 2
        below = np.clip((self.v + 0.01 * fh) / (0.05 * fh), 0, 1)
        below = below * below * (3 - 2 * below)
        fade = np.exp(-0.5 * (np.clip(self.v - chin_v, 0, None) / (0.18 * fh)) ** 2)
        self.weight = (side * below * fade).astype(np.float32)

    def apply(self, sprite: Sprite, amount: float) -> tuple[np.ndarray, np.ndarray]:
        """(rgb, alpha) with the mouth opened by `amount` in [0, 1]; the sprite itself is not changed."""
        rgb, alpha = sprite.rgb.copy(), sprite.alpha.copy()
        d = float(np.clip(amount, 0, 1)) * self.max_drop
        if d < 0.3:
            return rgb, alpha
        shift = d * self.weight  # sample from higher up the face: the chin moves down
        map_x = self.xx + shift * self.sin
        map_y = self.yy - shift * self.cos
        roi = (slice(self.y0, self.y1), slice(self.x0, self.x1))
        rgb[roi] = cv2.remap(sprite.rgb, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        alpha[roi] = cv2.remap(sprite.alpha, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        a = self.half_w * (0.62 + 0.25 * amount)
        b = d / 2
        r = np.sqrt((self.u / a) ** 2 + ((self.v - b) / max(b, 0.5)) ** 2)
        cavity = np.clip((1.0 - r) * max(b, 1.0), 0, 1)[..., None]  # about one pixel of soft edge
        depth = np.clip(1 - r, 0, 1)[..., None]
        colour = np.array([70, 28, 32], np.float32) * (1 - 0.6 * depth)
        teeth = (self.v < 0.28 * d) & (np.abs(self.u) < 0.7 * a)
        colour = np.where(teeth[..., None], np.array([196, 190, 178], np.float32) * (0.8 + 0.2 * depth), colour)
        rgb[roi] = rgb[roi] * (1 - cavity) + colour * cavity
        return rgb, alpha


def mouth_track(dry: np.ndarray, sr: int, n_frames: int, fps: float, start_s: float = 0.0) -> np.ndarray:
    """Mouth opening per frame `(n_frames,)` in [0, 1]: the speech's RMS envelope in 40 ms windows at
    the frame times (from `start_s` into `dry`), normalised by its 95th percentile over the utterance."""
    win = max(int(0.04 * sr), 8)
    power = np.convolve(dry.astype(np.float64) ** 2, np.ones(win) / win, mode="same")
    every = np.sqrt(power[:: max(int(sr / fps), 1)])
    norm = max(float(np.percentile(every, 95)), 1e-6)
    idx = np.clip(np.round((start_s + np.arange(n_frames) / fps) * sr).astype(int), 0, dry.size - 1)
    env = np.clip(np.sqrt(power[idx]) / norm, 0, 1) ** 0.7
    smoothed = np.convolve(np.pad(env, 1, mode="edge"), [0.25, 0.5, 0.25], mode="valid")
    return np.where(smoothed < 0.08, 0.0, smoothed).astype(np.float32)


# ---- scenes -------------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _photo(name: str) -> np.ndarray:
    img = getattr(skdata, name)()
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))


_BACKDROP_PHOTOS = ("coffee", "rocket", "chelsea", "hubble_deep_field", "immunohistochemistry", "colorwheel")
_TEXTURES = ("brick", "grass", "gravel")


def backdrop(kind: str, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A background `(h, w, 3)` float32 0-255: a drawn room, a defocused photograph or a tinted texture."""
    w, h = size
    if kind.startswith("photo:"):
        photo = _photo(kind.split(":")[1]).astype(np.float32)
        ph, pw = photo.shape[:2]
        zoom = rng.uniform(0.5, 1.0)
        cw, chh = int(pw * zoom), int(ph * zoom)
        if cw / chh > w / h:
            cw = int(chh * w / h)
        else:
            chh = int(cw * h / w)
        x0, y0 = int(rng.integers(0, pw - cw + 1)), int(rng.integers(0, ph - chh + 1))
        img = cv2.resize(photo[y0 : y0 + chh, x0 : x0 + cw], (w, h), interpolation=cv2.INTER_LINEAR)
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.006, 0.02) * max(w, h))  # shallow depth of field
        return img * rng.uniform(0.75, 1.05) * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    if kind.startswith("texture:"):
        tex = _photo(kind.split(":")[1]).astype(np.float32)[..., 0]
        reps = (int(math.ceil(h / tex.shape[0])) + 1, int(math.ceil(w / tex.shape[1])) + 1)
        tiled = np.tile(tex, reps)[: h + 40, : w + 40]
        lean = rng.uniform(0.05, 0.25) * w
        src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
        dst = np.float32([[0, 0], [w, lean * 0.4], [w, h - lean * 0.4], [0, h]]) if rng.random() < 0.5 else \
            np.float32([[0, lean * 0.4], [w, 0], [w, h], [0, h - lean * 0.4]])
        tiled = cv2.warpPerspective(tiled, cv2.getPerspectiveTransform(src, dst), (w, h), borderMode=cv2.BORDER_REFLECT)
        tint = rng.uniform(0.5, 1.0, 3).astype(np.float32)
        img = (0.55 * tiled[..., None] + 60.0) * tint
        return cv2.GaussianBlur(img, (0, 0), rng.uniform(0.002, 0.006) * max(w, h))
    # A room: wall with a light falloff, floor, a window, a framed picture, a door.
    wall = rng.uniform(90, 220, 3)
    floor = rng.uniform(40, 140, 3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    lx, ly = rng.uniform(-0.2, 1.2) * w, rng.uniform(-0.3, 0.3) * h
    light = 1.0 - 0.45 * np.clip(np.hypot(xx - lx, yy - ly) / (1.2 * max(w, h)), 0, 1)
    img = wall[None, None, :] * light[..., None]
    horizon = int(rng.uniform(0.72, 0.9) * h)
    img[horizon:] = floor * (0.8 + 0.2 * light[horizon:, :, None])
    img = img.astype(np.float32)
    for _ in range(int(rng.integers(1, 4))):
        fw_, fh_ = rng.uniform(0.08, 0.3) * w, rng.uniform(0.12, 0.4) * h
        fx, fy = rng.uniform(0, w - fw_), rng.uniform(0.05 * h, max(horizon - fh_, 0.06 * h))
        p0, p1 = (int(fx), int(fy)), (int(fx + fw_), int(fy + fh_))
        what = rng.random()
        if what < 0.4:  # window: bright panes and a cross bar
            cv2.rectangle(img, p0, p1, tuple(float(v) for v in rng.uniform(200, 255, 3)), -1)
            cv2.rectangle(img, p0, p1, tuple(float(v) for v in wall * 0.6), max(int(0.01 * w), 2))
            cv2.line(img, ((p0[0] + p1[0]) // 2, p0[1]), ((p0[0] + p1[0]) // 2, p1[1]), tuple(float(v) for v in wall * 0.6),
                     max(int(0.006 * w), 1))
        elif what < 0.8:  # a framed picture of one of the photographs
            pic = _photo(str(rng.choice(_BACKDROP_PHOTOS))).astype(np.float32)
            inner = cv2.resize(pic, (max(p1[0] - p0[0], 2), max(p1[1] - p0[1], 2)), interpolation=cv2.INTER_AREA)
            img[p0[1] : p1[1], p0[0] : p1[0]] = inner[: img[p0[1] : p1[1]].shape[0], : img[:, p0[0] : p1[0]].shape[1]]
            cv2.rectangle(img, p0, p1, tuple(float(v) for v in rng.uniform(20, 120, 3)), max(int(0.008 * w), 2))
        else:  # a door down to the floor
            cv2.rectangle(img, (p0[0], p0[1]), (p1[0], horizon), tuple(float(v) for v in rng.uniform(50, 160, 3)), -1)
    return cv2.GaussianBlur(img, (0, 0), rng.uniform(0.003, 0.012) * max(w, h))


@dataclass(frozen=True)
class HandheldCamera:
    """Per-frame homographies from the stage to the frame: small rotations of a pinhole camera
    (yaw, pitch, roll as Ornstein-Uhlenbeck processes plus tremor) and zoom, about the frame centre."""

    matrices: np.ndarray  # (T, 3, 3)
    style: str

    @classmethod
    def sample(cls, rng: np.random.Generator, n: int, fps: float, size: tuple[int, int], margin: tuple[float, float],
               still: bool = False) -> HandheldCamera:
        w, h = size
        style = "still" if still else ("tripod" if rng.random() < 0.3 else "handheld")
        scale = {"still": 0.0, "tripod": 0.08, "handheld": 1.0}[style]
        f = w * rng.uniform(0.9, 1.6)
        k = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]])
        k_inv = np.linalg.inv(k)
        base = np.array([[1, 0, -margin[0]], [0, 1, -margin[1]], [0, 0, 1]])
        # a static tilt of the whole shot, then the shake
        yaw0, pitch0 = np.deg2rad(rng.uniform(-1, 1, 2)) * (0.0 if still else 1.0)

        def ou(sigma_deg: float, tau: float) -> np.ndarray:
            rho = math.exp(-1.0 / (fps * tau))
            x = np.zeros(n)
            x[0] = rng.standard_normal() * sigma_deg
            for i in range(1, n):
                x[i] = rho * x[i - 1] + math.sqrt(1 - rho**2) * sigma_deg * rng.standard_normal()
            return np.deg2rad(x)

        amp = rng.uniform(0.15, 0.6) * scale
        yaw = ou(amp, rng.uniform(0.4, 1.5)) + ou(0.08 * scale, 0.06) + yaw0
        pitch = ou(amp, rng.uniform(0.4, 1.5)) + ou(0.08 * scale, 0.06) + pitch0
        roll = ou(rng.uniform(0.1, 0.8) * scale, rng.uniform(0.5, 2.0))
        zoom = 1.0 + np.rad2deg(ou(rng.uniform(0.0, 0.015) * scale, 1.5))
        mats = np.zeros((n, 3, 3))
        for i in range(n):
            cy, sy = math.cos(yaw[i]), math.sin(yaw[i])
            cp, sp = math.cos(pitch[i]), math.sin(pitch[i])
            cr, sr_ = math.cos(roll[i]), math.sin(roll[i])
            r = (np.array([[cr, -sr_, 0], [sr_, cr, 0], [0, 0, 1]]) @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
                 @ np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]]))
            mats[i] = k @ np.diag([zoom[i], zoom[i], 1.0]) @ r @ k_inv @ base
        return cls(mats, style)


@dataclass(frozen=True)
class Sensor:
    """Optics and sensor after the scene: lens blur, vignetting, white balance and exposure,
    signal-dependent noise (read + shot), then a tone curve."""

    blur: float
    gain: np.ndarray  # (h, w, 3) float32: vignette x white balance x exposure
    read_noise: float
    shot_noise: float
    lut: np.ndarray  # (256,) uint8 tone curve
    meta: dict

    @classmethod
    def sample(cls, rng: np.random.Generator, size: tuple[int, int]) -> Sensor:
        w, h = size
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        cx, cy = w / 2 * rng.uniform(0.9, 1.1), h / 2 * rng.uniform(0.9, 1.1)
        r2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / (w**2 / 4 + h**2 / 4)
        v1, v2 = rng.uniform(0.05, 0.35), rng.uniform(0.0, 0.15)
        vignette = np.clip(1 - v1 * r2 - v2 * r2**2, 0.3, 1)
        balance = rng.uniform(0.92, 1.08, 3).astype(np.float32)
        exposure = rng.uniform(0.85, 1.12)
        gamma, s_curve, black = rng.uniform(0.85, 1.15), rng.uniform(0.0, 0.45), rng.uniform(0.0, 8.0)
        v = np.linspace(0, 1, 256)
        tone = (1 - s_curve) * v**gamma + s_curve * v * v * (3 - 2 * v)
        lut = np.clip(black + (255 - black) * tone, 0, 255).round().astype(np.uint8)
        blur = float(rng.uniform(0.0, 1.1))
        read, shot = float(rng.uniform(0.6, 3.0)), float(rng.uniform(0.01, 0.12))
        meta = {"blur": blur, "vignette": [v1, v2], "white_balance": balance.tolist(), "exposure": exposure,
                "gamma": gamma, "s_curve": s_curve, "read_noise": read, "shot_noise": shot}
        return cls(blur, (vignette[..., None] * balance * exposure).astype(np.float32), read, shot, lut,
                   _rounded(meta))

    def capture(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """`(h, w, 3)` float32 scene -> uint8 RGB as recorded."""
        if self.blur > 0.3:
            image = cv2.GaussianBlur(image, (0, 0), self.blur)
        image = image * self.gain
        sigma = np.sqrt(self.read_noise**2 + self.shot_noise * np.clip(image, 0, None))
        image = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
        return cv2.LUT(np.clip(image, 0, 255).round().astype(np.uint8), self.lut)


def _rounded(value: object, digits: int = 4) -> object:
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_rounded(v, digits) for v in value]
    if isinstance(value, (float, np.floating)):
        return round(float(value), digits)
    if isinstance(value, np.integer):
        return int(value)
    return value


@dataclass
class Scene:
    """A subject on a backdrop: everything needed to render frame i given a mouth opening."""

    stage: np.ndarray  # (H', W', 3) float32, a margin larger than the frame
    sprite: Sprite
    rig: MouthRig
    placements: np.ndarray  # (T, 2, 3) sprite -> stage affines (head motion)
    camera: HandheldCamera
    sensor: Sensor
    size: tuple[int, int]

    def landmarks(self, i: int, sprite_marks: np.ndarray | None = None) -> np.ndarray:
        """The face's 68 points in frame pixels at frame i `(68, 2)`."""
        marks = self.sprite.landmarks if sprite_marks is None else sprite_marks
        stage = marks @ self.placements[i][:, :2].T + self.placements[i][:, 2]
        return cv2.perspectiveTransform(stage[None].astype(np.float64), self.camera.matrices[i])[0].astype(np.float32)

    def render(self, i: int, opening: float, rng: np.random.Generator) -> np.ndarray:
        rgb, alpha = self.rig.apply(self.sprite, opening)
        stage = self.stage.copy()
        m = self.placements[i]
        h, w = alpha.shape
        corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32) @ m[:, :2].T + m[:, 2]
        x0, y0 = np.floor(corners.min(axis=0)).astype(int) - 2
        x1, y1 = np.ceil(corners.max(axis=0)).astype(int) + 2
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, stage.shape[1]), min(y1, stage.shape[0])
        if x1 > x0 and y1 > y0:
            shifted = m.copy()
            shifted[:, 2] -= (x0, y0)
            size = (int(x1 - x0), int(y1 - y0))
            fg = cv2.warpAffine(rgb, shifted, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
            a = cv2.warpAffine(alpha, shifted, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)[..., None]
            stage[y0:y1, x0:x1] = stage[y0:y1, x0:x1] * (1 - a) + fg * a
        frame = cv2.warpPerspective(stage, self.camera.matrices[i], self.size, flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REFLECT)
        return self.sensor.capture(frame, rng)


def _extend_down(sprite: Sprite, rows: int) -> Sprite:
    """The body continued `rows` further down, so it reaches the frame's bottom: its lowest band
    reflected back and forth, more and more defocused and shaded."""
    if rows <= 0:
        return sprite
    h, w = sprite.alpha.shape
    band = slice(max(h - max(h // 8, 2), 0), h)
    column = np.median(sprite.rgb[band], axis=0)  # (w, 3): each column's colour, straps and all
    column = cv2.GaussianBlur(column[None], (0, 0), sigmaX=max(0.01 * w, 0.5), sigmaY=0.1)[0]
    shade = np.linspace(1.0, 0.8, rows, dtype=np.float32)[:, None, None]
    rgb = np.repeat(column[None], rows, axis=0) * shade
    alpha = np.repeat(np.median(sprite.alpha[band], axis=0)[None], rows, axis=0)
    return Sprite(np.concatenate([sprite.rgb, rgb]), np.concatenate([sprite.alpha, alpha]), sprite.landmarks)


def build_scene(
    identity: Identity, size: tuple[int, int], face_px: float, centre: tuple[float, float], roll_deg: float,
    n_frames: int, fps: float, rngs: dict[str, np.random.Generator], still: bool = False,
) -> Scene:
    """`identity` with a brow-to-chin height of `face_px` frame pixels, its face centred at `centre`
    (fractions of the frame), rolled by `roll_deg`, swaying a little over `n_frames`."""
    w, h = size
    margin = (round(0.06 * w), round(0.06 * h))
    stage_size = (w + 2 * margin[0], h + 2 * margin[1])
    stage = backdrop(identity.backdrop, stage_size, rngs["backdrop"])
    sprite = build_sprite(identity)
    sprite = sprite.scaled(face_px / sprite.face_height)
    face_centre = _face_geometry(sprite.landmarks)[0]
    target = np.array([centre[0] * w + margin[0], centre[1] * h + margin[1]])
    bottom = target[1] + sprite.alpha.shape[0] - face_centre[1]
    sprite = _extend_down(sprite, int(max(stage_size[1] - bottom, 0) + 0.15 * stage_size[1] + 8))
    rig = MouthRig(sprite)
    rng = rngs["pose"]
    t = np.arange(n_frames) / fps
    sway = np.zeros((n_frames, 3))
    if not still:
        for axis, amp in enumerate((0.025 * face_px, 0.015 * face_px, 2.0)):
            for _ in range(2):
                sway[:, axis] += rng.uniform(0, amp) * np.sin(2 * np.pi * rng.uniform(0.1, 0.6) * t + rng.uniform(0, 6.3))
    placements = np.zeros((n_frames, 2, 3), np.float32)
    for i in range(n_frames):
        m = cv2.getRotationMatrix2D((float(face_centre[0]), float(face_centre[1])), -(roll_deg + sway[i, 2]), 1.0)
        m[:, 2] += target + sway[i, :2] - face_centre
        placements[i] = m
    camera = HandheldCamera.sample(rngs["camera"], n_frames, fps, size, margin, still=still)
    sensor = Sensor.sample(rngs["sensor"], size)
    return Scene(stage, sprite, rig, placements, camera, sensor, size)


# ---- the Poisson face swap ----------------------------------------------------------------------


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity `(2, 3)` taking points `src` onto `dst` (Umeyama, no reflection)."""
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    sign = np.diag([1.0, float(np.sign(np.linalg.det(u @ vt)) or 1.0)])
    rot = u @ sign @ vt
    scale = float(np.trace(np.diag(sig) @ sign) / ((s**2).sum() / len(src)))
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - m[:, :2] @ mu_s
    return m


def _anchors(marks: np.ndarray) -> np.ndarray:
    """Eye centres, nose tip, mouth corners `(5, 2)`, each pair ordered left to right in the image."""
    eyes = sorted([marks[36:42].mean(axis=0), marks[42:48].mean(axis=0)], key=lambda p: p[0])
    mouth = sorted([marks[48], marks[54]], key=lambda p: p[0])
    return np.array([*eyes, marks[30], *mouth], np.float64)


def _inner_face(marks: np.ndarray) -> np.ndarray:
    """The region a swap replaces: brows to chin, inside the jaw line `(K, 2)`."""
    centre = marks[27:36].mean(axis=0)
    jaw = (marks[2:15] - centre) * 0.9 + centre
    _, _, fh = _face_geometry(marks)
    brows = marks[17:27] - np.array([0, 0.06 * fh])
    return np.concatenate([jaw, brows[::-1]])


@dataclass
class Donor:
    """Another identity's face, animated with the target's mouth opening before it is cloned in."""

    identity: Identity
    sprite: Sprite
    rig: MouthRig

    @classmethod
    def of(cls, identity: Identity) -> Donor:
        sprite = build_sprite(identity)
        return cls(identity, sprite, MouthRig(sprite))


def poisson_swap(
    frame: np.ndarray, target_marks: np.ndarray, donor: Donor, opening: float, rng: np.random.Generator,
    clone: Literal["normal", "mixed"] = "normal", jitter: float = 0.012,
) -> tuple[np.ndarray, np.ndarray]:
    """(frame with the donor's face cloned over the target's, the clone mask `(h, w)` bool).

    The donor is aligned to the target's eyes, nose and mouth corners (with landmark noise of
    `jitter` face heights, as a per-frame swap pipeline's detector has), then gradient-domain
    blended (`cv2.seamlessClone`), so its colour follows the target's surroundings."""
    h, w = frame.shape[:2]
    _, _, fh = _face_geometry(target_marks)
    dst = _anchors(target_marks) + rng.normal(0, jitter * fh, (5, 2))
    m = _similarity(_anchors(donor.sprite.landmarks), dst)
    region = _inner_face(donor.sprite.landmarks) @ m[:, :2].T + m[:, 2]
    mask = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(np.round(region).astype(np.int32)), 255)
    mask[:3], mask[-3:], mask[:, :3], mask[:, -3:] = 0, 0, 0, 0
    bx, by, bw, bh = cv2.boundingRect(mask)
    if bw < 4 or bh < 4:
        return frame, np.zeros((h, w), bool)
    rgb, _ = donor.rig.apply(donor.sprite, opening)
    x0, y0, x1, y1 = max(bx - 2, 0), max(by - 2, 0), min(bx + bw + 2, w), min(by + bh + 2, h)
    shifted = m.copy()
    shifted[:, 2] -= (x0, y0)
    src = cv2.warpAffine(np.clip(rgb, 0, 255).astype(np.uint8), shifted, (x1 - x0, y1 - y0), flags=cv2.INTER_CUBIC,
                         borderMode=cv2.BORDER_REPLICATE)
    roi_mask = mask[y0:y1, x0:x1]
    rx, ry, rw, rh = cv2.boundingRect(roi_mask)
    centre = (x0 + rx + rw // 2, y0 + ry + rh // 2)
    flag = cv2.NORMAL_CLONE if clone == "normal" else cv2.MIXED_CLONE
    cloned = cv2.seamlessClone(np.ascontiguousarray(src), np.ascontiguousarray(frame), np.ascontiguousarray(roi_mask),
                               centre, flag)
    inside = mask > 0
    out = frame.copy()
    out[inside] = cloned[inside]
    return out, inside


# ---- speech -------------------------------------------------------------------------------------

# Vowels: F1-F5 (Hz, an adult male tract) and how open the jaw is.
_VOWELS = (
    ((760, 1180, 2500, 3450, 4450), 1.0), ((660, 1720, 2410, 3400, 4400), 0.85),
    ((480, 1870, 2560, 3500, 4500), 0.55), ((300, 2270, 2980, 3650, 4600), 0.25),
    ((500, 880, 2480, 3400, 4400), 0.65), ((330, 820, 2260, 3300, 4350), 0.3),
    ((520, 1480, 2480, 3450, 4450), 0.5),
)
_BANDWIDTHS = np.array([70.0, 95.0, 130.0, 170.0, 220.0])
# Consonants: (kind, noise centre Hz, noise bandwidth Hz, seconds)
_CONSONANTS = (
    ("fricative", 6200, 2400, 0.09), ("fricative", 3100, 1200, 0.1), ("fricative", 4200, 3500, 0.07),
    ("plosive", 1500, 1200, 0.018), ("plosive", 4000, 2500, 0.015), ("plosive", 2600, 1500, 0.02),
    ("nasal", 0, 0, 0.06), ("nasal", 0, 0, 0.07),
)
_CTRL_HZ = 100  # control frames per second for the formant tracks


@dataclass(frozen=True)
class Speaker:
    """A voice: glottal source, vocal tract and speaking habits."""

    f0_hz: float
    pitch_range_st: float  # phrase-level pitch range in semitones
    tract: float  # formant scale: > 1 is a shorter tract
    bandwidth: float  # formant bandwidth scale
    open_quotient: float  # share of the glottal period the glottis is open
    speed_quotient: float  # opening / closing time
    jitter: float  # period-to-period pitch noise
    shimmer: float  # period-to-period amplitude noise
    aspiration: float
    syllable_rate: float  # syllables per second
    reverb_s: float  # the room's RT60
    noise_db: float  # background noise below the speech peak

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Speaker:
        register = rng.choice(3, p=[0.45, 0.45, 0.1])  # low, high, child-like
        f0 = (rng.uniform(85, 145), rng.uniform(165, 255), rng.uniform(250, 320))[register]
        tract = (rng.uniform(0.9, 1.02), rng.uniform(1.08, 1.2), rng.uniform(1.22, 1.32))[register]
        return cls(
            f0_hz=float(f0), pitch_range_st=float(rng.uniform(2.0, 7.0)), tract=float(tract),
            bandwidth=float(rng.uniform(0.8, 1.4)), open_quotient=float(rng.uniform(0.45, 0.75)),
            speed_quotient=float(rng.uniform(1.5, 3.5)), jitter=float(rng.uniform(0.004, 0.02)),
            shimmer=float(rng.uniform(0.02, 0.08)), aspiration=float(rng.uniform(0.01, 0.08)),
            syllable_rate=float(rng.uniform(3.5, 6.0)), reverb_s=float(rng.uniform(0.1, 0.45)),
            noise_db=float(rng.uniform(30.0, 50.0)),
        )

    def meta(self) -> dict:
        return _rounded(self.__dict__)


@dataclass
class Speech:
    dry: np.ndarray  # (N,) float32: the voice as the mouth makes it (drives the mouth)
    wet: np.ndarray  # (N,) float32: as recorded (room, noise, microphone), peak-normalised


@lru_cache(maxsize=64)
def _real_recording(path: str) -> np.ndarray:
    """A real recording decoded as the service decodes uploads (16 kHz mono float32)."""
    from training.spoof import decode_audio

    return decode_audio(Path(path))


def real_speech(paths: tuple[str, ...], first: int, seconds: float, sr: int) -> Speech:
    """`seconds` of real speech at `sr`: recordings from `first` on in `paths`, 0.3 s apart, looped if short.
    Nothing is synthesized; the mouth follows this audio's envelope like any other voice."""
    from scipy.signal import resample_poly

    need = int(round(seconds * 16_000))
    parts, total, k = [], 0, 0
    while total < need and k < 4 * len(paths):
        clip = _real_recording(paths[(first + k) % len(paths)])
        parts += [clip, np.zeros(4800, np.float32)]
        total += clip.size + 4800
        k += 1
    audio = np.concatenate(parts)[:need] if parts else np.zeros(need, np.float32)
    audio = np.pad(audio, (0, max(0, need - audio.size)))
    out = resample_poly(audio, sr, 16_000).astype(np.float32)[: int(round(seconds * sr))] if sr != 16_000 else audio
    out = out / (np.abs(out).max() + 1e-6) * 0.9
    return Speech(dry=out, wet=out)


def voice(item: ItemPlan, identity: Identity, seconds: float, sr: int, rng: np.random.Generator,
          config: IndependentConfig) -> Speech:
    """The person's formant voice, or, with `config.real_speech`, real recordings assigned by their group."""
    if not config.real_speech:
        return speak(identity.speaker, seconds, sr, rng)
    person = int(identity.group.rsplit("-p", 1)[-1])
    return real_speech(config.real_speech, (7 * person + item.index) % len(config.real_speech), seconds, sr)


def _voice_meta(identity: Identity, config: IndependentConfig) -> dict:
    return {"voice": "real"} if config.real_speech else {"voice": "formant", **identity.speaker.meta()}


def speak(speaker: Speaker, seconds: float, sr: int, rng: np.random.Generator) -> Speech:
    """An utterance of `seconds` at `sr`: phrases of syllables (consonant onsets, vowel nuclei,
    optional codas) with pauses; cascade-formant synthesis of Rosenberg glottal pulses."""
    n = int(round(seconds * sr))
    n_ctrl = int(math.ceil(seconds * _CTRL_HZ)) + 2
    voice = np.zeros(n_ctrl)
    noise = np.zeros(n_ctrl)
    noise_fc = np.full(n_ctrl, 3000.0)
    noise_bw = np.full(n_ctrl, 2000.0)
    formants = np.tile(np.array(_VOWELS[6][0], float), (n_ctrl, 1))
    pitch_st = np.zeros(n_ctrl)  # semitones about f0
    c = int(rng.uniform(0.05, 0.3) * _CTRL_HZ)
    while c < n_ctrl:
        n_syll = int(rng.integers(3, 9))
        phrase_start = c
        for k in range(n_syll):
            if c >= n_ctrl:
                break
            stressed = rng.random() < 0.35
            if rng.random() < 0.6:
                kind, fc, bw, dur = _CONSONANTS[int(rng.integers(len(_CONSONANTS)))]
                m = max(int(dur * _CTRL_HZ / (speaker.syllable_rate / 4.5)), 1)
                sl = slice(c, min(c + m, n_ctrl))
                if kind == "nasal":
                    voice[sl] = 0.35
                    formants[sl] = np.array([250, 1100, 2300, 3300, 4300.0])
                else:
                    noise[sl] = rng.uniform(0.15, 0.4) if kind == "fricative" else rng.uniform(0.4, 0.8)
                    noise_fc[sl], noise_bw[sl] = fc * speaker.tract, bw
                c += m
                if c >= n_ctrl:
                    break
            vowel, openness = _VOWELS[int(rng.integers(len(_VOWELS)))]
            dur = rng.gamma(6.0, 1.0 / 6.0) * (0.75 / speaker.syllable_rate) * (1.3 if stressed else 1.0)
            m = max(int(dur * _CTRL_HZ), 4)
            sl = slice(c, min(c + m, n_ctrl))
            ramp = np.sin(np.linspace(0, np.pi, m)) ** 0.5
            voice[sl] = (0.55 + 0.45 * openness) * rng.uniform(0.7, 1.0) * ramp[: sl.stop - sl.start]
            formants[sl] = np.array(vowel, float)
            if stressed:
                pitch_st[sl] += speaker.pitch_range_st * rng.uniform(0.3, 0.8)
            c += m
            if rng.random() < 0.25 and c < n_ctrl:  # a nasal or fricative coda
                m = int(rng.uniform(0.03, 0.07) * _CTRL_HZ)
                sl = slice(c, min(c + m, n_ctrl))
                if rng.random() < 0.5:
                    voice[sl] = 0.3
                    formants[sl] = np.array([260, 1300, 2400, 3300, 4300.0])
                else:
                    noise[sl] = rng.uniform(0.1, 0.3)
                    noise_fc[sl] = 5000 * speaker.tract
                c += m
            if k < n_syll - 1 and rng.random() < 0.2:
                c += int(rng.uniform(0.03, 0.12) * _CTRL_HZ)  # a word boundary
        span = max(c - phrase_start, 1)
        pitch_st[phrase_start : min(c, n_ctrl)] += np.linspace(
            speaker.pitch_range_st / 2, -speaker.pitch_range_st / 2, span
        )[: min(c, n_ctrl) - phrase_start]
        c += int(rng.uniform(0.15, 0.45) * _CTRL_HZ)  # pause between phrases

    # Coarticulation: the tract glides between targets; pitch and loudness do not jump.
    kernel = np.hanning(7)[1:-1]
    kernel /= kernel.sum()
    formants = np.stack([np.convolve(np.pad(formants[:, j], 2, mode="edge"), kernel, "valid") for j in range(5)], 1)
    pitch_st = np.convolve(np.pad(pitch_st, 4, mode="edge"), np.hanning(11)[1:-1] / np.hanning(11)[1:-1].sum(), "valid")
    formants = formants * speaker.tract

    # Glottal source: one Rosenberg pulse (differentiated: lip radiation) per period.
    t_ctrl = np.arange(n_ctrl) / _CTRL_HZ
    t = np.arange(n) / sr
    amp = np.interp(t, t_ctrl, voice)
    f0 = speaker.f0_hz * 2.0 ** (np.interp(t, t_ctrl, pitch_st) / 12.0)
    source = np.zeros(n + sr // 10)  # room for the last (longest: 1/70 s) period
    pos = 0.0
    while pos < n:
        i = int(pos)
        period = sr / (f0[i] * (1 + speaker.jitter * rng.standard_normal()))
        if amp[i] > 1e-3:
            tp = speaker.open_quotient * speaker.speed_quotient / (1 + speaker.speed_quotient) * period
            tn = speaker.open_quotient / (1 + speaker.speed_quotient) * period
            k = np.arange(int(tp + tn) + 1, dtype=float)
            pulse = np.where(k < tp, 0.5 * (1 - np.cos(np.pi * k / max(tp, 1e-6))),
                             np.cos(np.pi * (k - tp) / (2 * max(tn, 1e-6))))
            pulse = np.diff(np.clip(pulse, 0, None), prepend=0.0)
            gain = amp[i] * (1 + speaker.shimmer * rng.standard_normal())
            source[i : i + pulse.size] += gain * pulse / (np.abs(pulse).max() + 1e-9)
        pos += period
    source = source[:n]
    white = rng.standard_normal(n)
    source = source + speaker.aspiration * amp * white * 0.5
    hiss = np.interp(t, t_ctrl, noise) * rng.standard_normal(n) * 0.35

    hop = max(sr // _CTRL_HZ, 1)
    nfft = 1 << int(math.ceil(math.log2(2 * hop + 0.05 * sr)))
    freqs = np.fft.rfftfreq(nfft, 1.0 / sr)
    n_frames = int(math.ceil(n / hop)) + 1
    frame_t = np.arange(n_frames) * hop / sr
    track = np.stack([np.interp(frame_t, t_ctrl, formants[:, j]) for j in range(5)], 1)  # (K, 5)
    z1 = np.exp(-1j * 2 * np.pi * freqs / sr)[None, :]
    voiced_resp = np.ones((n_frames, freqs.size), complex)
    for j in range(5):
        fj = track[:, j : j + 1]
        r = np.exp(-np.pi * _BANDWIDTHS[j] * speaker.bandwidth / sr)
        a1 = -2 * r * np.cos(2 * np.pi * fj / sr)
        res = (1 + a1 + r * r) / (1 + a1 * z1 + r * r * z1 * z1)
        voiced_resp *= np.where(fj < 0.46 * sr, res, 1.0)
    fc = np.clip(np.interp(frame_t, t_ctrl, noise_fc), 300, 0.45 * sr)[:, None]
    bw = np.interp(frame_t, t_ctrl, noise_bw)[:, None]
    r = np.exp(-np.pi * bw / sr)
    a1 = -2 * r * np.cos(2 * np.pi * fc / sr)
    noise_resp = (1 + a1 + r * r) / (1 + a1 * z1 + r * r * z1 * z1) * np.clip(freqs / 1500.0, 0, 1)[None, :]
    dry = _ola(source, voiced_resp, hop, nfft) + _ola(hiss, noise_resp, hop, nfft) * 0.5
    dry = dry / (np.abs(dry).max() + 1e-9) * 0.8

    # The room and the microphone: exponential-decay reverb, a noise floor, a high-pass.
    ir_n = max(int(speaker.reverb_s * sr), 16)
    ir = rng.standard_normal(ir_n) * np.exp(-6.9 * np.arange(ir_n) / ir_n) * 0.08
    ir[0] = 1.0
    size = 1 << int(math.ceil(math.log2(n + ir_n)))
    wet = np.fft.irfft(np.fft.rfft(dry, size) * np.fft.rfft(ir, size), size)[:n]
    f = np.fft.rfftfreq(n, 1.0 / sr)
    floor = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) / np.sqrt(np.maximum(f, 20.0) / 20.0), n)  # pink-ish
    wet = wet / (np.abs(wet).max() + 1e-9) + floor / (np.abs(floor).max() + 1e-9) * 10 ** (-speaker.noise_db / 20)
    spec = np.fft.rfft(wet)
    wet = np.fft.irfft(spec * (1 / (1 + (70.0 / np.maximum(f, 1e-3)) ** 4)), n)
    peak = float(rng.uniform(0.6, 0.9))
    return Speech(dry.astype(np.float32), (wet / (np.abs(wet).max() + 1e-9) * peak).astype(np.float32))


def _ola(x: np.ndarray, response: np.ndarray, hop: int, nfft: int) -> np.ndarray:
    """Time-varying filtering: Hann-windowed frames (2 `hop` long, hop `hop`) of `x` times their own
    frequency response `(K, nfft // 2 + 1)`, overlap-added with their full tails."""
    k = response.shape[0]
    window = np.hanning(2 * hop + 1)[:-1]  # periodic: shifted copies sum to one
    padded = np.concatenate([np.zeros(hop), x, np.zeros(k * hop + nfft)])
    frames = padded[np.arange(k)[:, None] * hop + np.arange(2 * hop)[None, :]] * window
    filtered = np.fft.irfft(np.fft.rfft(frames, nfft) * response, nfft)
    out = np.zeros(k * hop + nfft)
    for i in range(k):
        out[i * hop : i * hop + nfft] += filtered[i]
    return out[hop : hop + x.size]


def _levinson(r: np.ndarray, order: int) -> tuple[np.ndarray, float]:
    """LPC polynomial `(order + 1,)` and prediction error from autocorrelation `r`."""
    a = np.zeros(order + 1)
    a[0] = 1.0
    err = float(r[0]) + 1e-12
    for i in range(1, order + 1):
        k = -(r[i] + a[1:i] @ r[i - 1 : 0 : -1]) / err
        a[1 : i + 1] = a[1 : i + 1] + k * a[i - 1 :: -1][: i]
        err *= 1 - k * k
        if err <= 1e-12:
            break
    return a, err


def lpc_resynthesis(x: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """An LPC vocoder: per 10 ms frame, an all-pole envelope, a pitch estimate and a voicing degree
    from the signal; a new excitation (phase-continuous pulses + noise) through that envelope."""
    x = x.astype(np.float64)
    n = x.size
    pre = np.append(x[0], x[1:] - 0.95 * x[:-1])
    hop = max(sr // 100, 1)
    win_n = 2 * hop
    order = min(int(sr / 1000) + 4, 40)
    k = int(math.ceil(n / hop)) + 1
    padded = np.concatenate([np.zeros(hop), pre, np.zeros(3 * win_n)])
    frames = padded[np.arange(k)[:, None] * hop + np.arange(win_n)[None, :]] * np.hamming(win_n)
    nfft = 1 << int(math.ceil(math.log2(4 * win_n)))
    spec = np.fft.rfft(frames, nfft)
    ac = np.fft.irfft(np.abs(spec) ** 2, nfft)  # (K, nfft) autocorrelation
    lo, hi = int(sr / 400), min(int(sr / 60), win_n - 1)
    z = np.exp(-1j * 2 * np.pi * np.fft.rfftfreq(nfft, 1.0 / sr) / sr)
    response = np.zeros((k, nfft // 2 + 1), complex)
    powers = z[None, :] ** np.arange(order + 1)[:, None]  # (order + 1, F): A(z) = a @ powers
    excitation = np.zeros(n + 3 * win_n)
    phase = 0.0
    for i in range(k):
        r = ac[i]
        a, err = _levinson(r[: order + 1], order)
        response[i] = math.sqrt(max(err, 0.0) / win_n) / (a @ powers)
        lag = lo + int(np.argmax(r[lo:hi])) if hi > lo else lo
        voicing = float(np.clip(r[lag] / (r[0] + 1e-12), 0, 1)) if hi > lo else 0.0
        seg = np.zeros(hop)
        if voicing > 0.3:
            period = lag
            while phase < hop:
                seg[int(phase)] += math.sqrt(period)
                phase += period
            phase -= hop
        seg = math.sqrt(voicing) * seg + math.sqrt(1 - voicing) * rng.standard_normal(hop)
        excitation[i * hop : (i + 1) * hop] = seg
    y = _ola(excitation[:n], response, hop, nfft)
    y = np.fft.irfft(np.fft.rfft(y, 2 * n) / (1 - 0.95 * np.exp(-1j * 2 * np.pi * np.fft.rfftfreq(2 * n))), 2 * n)[:n]
    y = y * (np.sqrt(np.mean(x**2)) / (np.sqrt(np.mean(y**2)) + 1e-12))
    return np.clip(y, -1, 1).astype(np.float32)


def phase_resynthesis(x: np.ndarray, sr: int, rng: np.random.Generator, sigma: float = 1.0) -> np.ndarray:
    """STFT magnitudes kept, phases re-made: each bin advances by its own frequency plus Gaussian
    noise of `sigma` radians per hop (a smeared, metallic resynthesis)."""
    n = x.size
    nfft = 1 << int(round(math.log2(0.032 * sr)))
    hop = nfft // 4
    window = np.hanning(nfft + 1)[:-1]
    padded = np.concatenate([np.zeros(nfft), x.astype(np.float64), np.zeros(2 * nfft)])
    k = (padded.size - nfft) // hop
    frames = padded[np.arange(k)[:, None] * hop + np.arange(nfft)[None, :]] * window
    mag = np.abs(np.fft.rfft(frames, axis=1))
    advance = 2 * np.pi * np.arange(nfft // 2 + 1) * hop / nfft
    phase = np.cumsum(advance[None, :] + rng.normal(0, sigma, mag.shape), axis=0)
    frames = np.fft.irfft(mag * np.exp(1j * phase), nfft, axis=1) * window
    out = np.zeros(padded.size)
    norm = np.zeros(padded.size)
    for i in range(k):
        out[i * hop : i * hop + nfft] += frames[i]
        norm[i * hop : i * hop + nfft] += window**2
    y = (out / np.maximum(norm, 1e-3))[nfft : nfft + n]
    y = y * (np.sqrt(np.mean(x**2)) / (np.sqrt(np.mean(y**2)) + 1e-12))
    return np.clip(y, -1, 1).astype(np.float32)


# ---- encoding -----------------------------------------------------------------------------------

_VIDEO_SPECS = {  # codec name -> (PyAV encoder, container, file extension, audio encoder, CRF range)
    "h264": ("libx264", "mp4", "mp4", "aac", (18, 38)),
    "hevc": ("libx265", "mp4", "mp4", "aac", (20, 34)),
    "vp9": ("libvpx-vp9", "webm", "webm", "libopus", (24, 48)),
}
_OPUS_RATES = (8_000, 12_000, 16_000, 24_000, 48_000)
_BITEXACT = {"fflags": "+bitexact"}  # no random Matroska UIDs or Ogg serial numbers: same bytes per seed


def _encoder_options(codec: str, crf: int) -> dict[str, str]:
    if codec == "libx264":
        return {"crf": str(crf), "preset": "faster", "threads": "1", "x264-params": "mbtree=0:sliced-threads=0"}
    if codec == "libx265":
        return {"crf": str(crf), "preset": "ultrafast",
                "x265-params": "pools=none:frame-threads=1:lookahead-threads=0:log-level=error"}
    return {"crf": str(crf), "b": "0", "deadline": "realtime", "cpu-used": "8", "threads": "1", "row-mt": "0",
            "lag-in-frames": "0"}


def encode_video(frames: np.ndarray, fps: int, audio: np.ndarray, sr: int, codec: str, crf: int) -> bytes:
    """`frames` `(T, H, W, 3)` uint8 RGB and mono `audio` at `sr` as one file of `codec`'s container."""
    encoder, container, _, audio_encoder, _ = _VIDEO_SPECS[codec]
    buf = io.BytesIO()
    with av.open(buf, "w", format=container, options=_BITEXACT) as out:
        video = out.add_stream(encoder, rate=fps, options=_encoder_options(encoder, crf))
        video.width, video.height = frames.shape[2], frames.shape[1]
        video.pix_fmt = "yuv420p"
        video.time_base = Fraction(1, fps)
        rate = sr if audio_encoder != "libopus" or sr in _OPUS_RATES else 48_000
        sound = out.add_stream(audio_encoder, rate=rate)
        sound.layout = "mono"
        if audio_encoder == "aac":
            sound.bit_rate = 96_000
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        for packet in _audio_packets(sound, audio, sr):
            out.mux(packet)
    return buf.getvalue()


def _audio_packets(stream: av.audio.stream.AudioStream, audio: np.ndarray, sr: int) -> list[av.Packet]:
    pcm = (np.clip(audio, -1, 1) * 32767).round().astype(np.int16)
    packets = []
    step = 1024
    for start in range(0, pcm.size, step):
        frame = av.AudioFrame.from_ndarray(pcm[None, start : start + step], format="s16", layout="mono")
        frame.sample_rate = sr
        frame.pts = start
        frame.time_base = Fraction(1, sr)
        packets += stream.encode(frame)
    packets += stream.encode(None)
    return packets


def decode_frames(data: bytes) -> np.ndarray:
    """Every picture of a video file `(T, H, W, 3)` uint8 RGB."""
    with av.open(io.BytesIO(data)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def encode_audio(audio: np.ndarray, sr: int, fmt: str) -> bytes:
    """Mono `audio` as a WAV, FLAC, MP3 or Ogg/Opus file."""
    container, encoder = {"wav": ("wav", "pcm_s16le"), "flac": ("flac", "flac"), "mp3": ("mp3", "libmp3lame"),
                          "ogg": ("ogg", "libopus")}[fmt]
    rate = sr if fmt != "ogg" or sr in _OPUS_RATES else 48_000
    buf = io.BytesIO()
    with av.open(buf, "w", format=container, options=_BITEXACT) as out:
        stream = out.add_stream(encoder, rate=rate)
        stream.layout = "mono"
        if fmt == "mp3":
            stream.bit_rate = 64_000
        for packet in _audio_packets(stream, audio, sr):
            out.mux(packet)
    return buf.getvalue()


def _band(quality: int) -> str:
    """A JPEG quality's band for the manifest's `compression` (the exact value is in `meta`)."""
    return "q55-74" if quality < 75 else "q75-95"


def _crf_band(codec: str, crf: int) -> str:
    """A CRF's band for the manifest's `compression`: high, mid or low quality for that codec."""
    low, high = _VIDEO_SPECS[codec][4]
    third = (high - low) / 3
    return "high" if crf < low + third else ("mid" if crf < low + 2 * third else "low")


def encode_image(rgb: np.ndarray, fmt: str, rng: np.random.Generator) -> tuple[bytes, str, str, dict]:
    """(bytes, extension, compression band, exact settings) for `fmt` in jpeg, png, jpegx2."""
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if fmt == "png":
        return cv2.imencode(".png", bgr)[1].tobytes(), "png", "png", {}
    q = int(rng.integers(55, 96))
    if fmt == "jpegx2":
        first = int(rng.integers(80, 96))
        bgr = cv2.imdecode(cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, first])[1], cv2.IMREAD_COLOR)
        data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, q])[1].tobytes()
        return data, "jpg", f"jpeg_x2_{_band(q)}", {"jpeg_quality": q, "first_jpeg_quality": first}
    data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, q])[1].tobytes()
    return data, "jpg", f"jpeg_{_band(q)}", {"jpeg_quality": q}


# ---- the plan -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemPlan:
    """One file: what it is, whose, and the few choices balanced over the whole set."""

    index: int
    kind: Literal["video", "image", "audio"]
    family: str | None
    identity: Identity | None  # None: a faceless photograph
    donor: Identity | None  # face_swap_poisson: whose face; audio_swap: whose voice
    face_u: float  # stratified position in [0, 1] of the face height within its range
    size: tuple[int, int]
    codec: str  # video codec, image format or audio format
    sample_rate: int
    seconds: float
    photo: str | None = None
    seed: int = 0

    @property
    def path(self) -> str:
        return f"{self.kind}/{self.index:04d}"


def _balanced(values: tuple, n: int, rng: np.random.Generator) -> list:
    """`n` values cycling through shuffled copies of `values`: every value equally often (±1)."""
    out: list = []
    while len(out) < n:
        out += [values[i] for i in rng.permutation(len(values))]
    return out[:n]


def _stratified(n: int, rng: np.random.Generator) -> np.ndarray:
    return (rng.permutation(n) + rng.uniform(0, 1, n)) / max(n, 1)


def _identities(n: int, rng: np.random.Generator, seed: int) -> list[Identity]:
    """Half astronaut variants, half LFW people, alternating."""
    lfw = rng.permutation(100)
    kinds = [f"photo:{p}" for p in _BACKDROP_PHOTOS] + [f"texture:{t}" for t in _TEXTURES] + ["room"] * 4
    out = []
    for i in range(n):
        out.append(Identity(
            group=f"indep{seed}-p{i:03d}",
            face="astronaut" if i % 2 == 0 else f"lfw:{int(lfw[i % 100])}",
            skin=int(rng.integers(len(_SKIN_LAB))), mirror=bool(rng.random() < 0.5),
            hair=int(rng.integers(len(_HAIR_RGB))), clothes=int(rng.integers(len(_CLOTHES_RGB))),
            crop=float(rng.uniform(0.1, 0.4)),
            transfer=float(rng.uniform(0.4, 0.9)), speaker=Speaker.sample(rng), backdrop=str(rng.choice(kinds)),
        ))
    return out


def plan_items(config: IndependentConfig) -> list[ItemPlan]:
    """Every file of the benchmark, in manifest order (videos, images, audio)."""
    rng = np.random.default_rng([config.seed, 0xB0B])
    n_people = max(4, math.ceil((config.n_videos + config.n_images + config.n_audio) / 3))
    people = _identities(n_people, rng, config.seed)
    pools = {True: [p for p in people if p.is_lfw], False: [p for p in people if not p.is_lfw]}
    turn = Counter()

    def person(lfw: bool, avoid: str | None = None) -> Identity:
        pool = pools[lfw]
        for _ in range(len(pool)):
            p = pool[turn[lfw] % len(pool)]
            turn[lfw] += 1
            if p.group != avoid:
                return p
        return pool[0]

    items: list[ItemPlan] = []
    index = 0
    us = _stratified(config.n_videos, rng)
    sizes = _balanced(config.resolutions, config.n_videos, rng)
    codecs = _balanced(_VIDEO_CODECS, config.n_videos, rng)
    rates = _balanced(config.video_sample_rates, config.n_videos, rng)
    for i in range(config.n_videos):
        family = _VIDEO_CYCLE[i % len(_VIDEO_CYCLE)]
        w, h = sizes[i]
        face_px = _face_px(us[i], min(w, h), config)
        who = person(face_px <= _LFW_MAX_FACE_PX and bool(rng.random() < 0.6))
        donor = None
        if family == "face_swap_poisson":
            donor = _donor(person, who, face_px, rng)
        elif family == "audio_swap":
            donor = person(bool(rng.random() < 0.5), avoid=who.group)
        seconds = round(float(rng.uniform(*config.seconds)) * FPS) / FPS
        items.append(ItemPlan(index, "video", family, who, donor, float(us[i]), (w, h), codecs[i], rates[i], seconds,
                              seed=config.seed))
        index += 1

    kinds = [_IMAGE_CYCLE[i % len(_IMAGE_CYCLE)] for i in range(config.n_images)]
    faced = [i for i, k in enumerate(kinds) if k != "faceless"]
    us = dict(zip(faced, _stratified(len(faced), rng), strict=True))
    sizes = _balanced(config.image_sizes, config.n_images, rng)
    formats = _balanced(_IMAGE_FORMATS, config.n_images, rng)
    photos = _balanced(FACELESS_PHOTOS, config.n_images, rng)
    for i, kind in enumerate(kinds):
        if kind == "faceless":
            items.append(ItemPlan(index, "image", None, None, None, 0.0, sizes[i], formats[i], 0, 0.0, photo=photos[i],
                                  seed=config.seed))
        else:
            w, h = sizes[i]
            face_px = _face_px(us[i], min(w, h), config)
            who = person(face_px <= _LFW_MAX_FACE_PX and bool(rng.random() < 0.6))
            family = "face_swap_poisson" if kind == "face_swap_poisson" else None
            donor = _donor(person, who, face_px, rng) if family else None
            items.append(ItemPlan(index, "image", family, who, donor, float(us[i]), (w, h), formats[i], 0, 0.0,
                                  seed=config.seed))
        index += 1

    formats = _balanced(_AUDIO_FORMATS, config.n_audio, rng)
    rates = _balanced(config.audio_sample_rates, config.n_audio, rng)
    for i in range(config.n_audio):
        who = people[i % len(people)]
        seconds = float(rng.uniform(*config.seconds))
        items.append(ItemPlan(index, "audio", _AUDIO_CYCLE[i % len(_AUDIO_CYCLE)], who, None, 0.0, (0, 0), formats[i],
                              rates[i], round(seconds, 2), seed=config.seed))
        index += 1
    return items


def _donor(person: Callable[..., Identity], who: Identity, face_px: float, rng: np.random.Generator) -> Identity:
    """Whose face replaces `who`'s: another person (LFW) where an LFW face upsampled to that size
    still looks like a generated face; for large faces also another astronaut identity (other
    colour, mirror, crop), as a reenactment of the same person would be."""
    lfw = face_px <= 1.6 * _LFW_MAX_FACE_PX and not who.is_lfw or bool(rng.random() < 0.5)
    return person(lfw, avoid=who.group)


def _face_px(u: float, short_side: int, config: IndependentConfig) -> float:
    """Brow-to-chin height: log-uniform from `min_face_px` to `max_face_fraction` of the short side."""
    top = max(config.max_face_fraction * short_side, config.min_face_px * 1.5)
    return float(math.exp(math.log(config.min_face_px) + u * (math.log(top) - math.log(config.min_face_px))))


# ---- rendering one item -------------------------------------------------------------------------

_STREAMS = ("backdrop", "pose", "camera", "sensor", "noise", "speech", "donor_speech", "place", "codec", "swap",
            "freeze", "offset", "resynth", "photo")


def _rngs(item: ItemPlan) -> dict[str, np.random.Generator]:
    return {name: np.random.default_rng([item.seed, item.index, i]) for i, name in enumerate(_STREAMS)}


@dataclass
class Rendered:
    """One file before encoding and the ground truth the tests read."""

    item: ItemPlan
    data: bytes
    ext: str
    compression: str
    meta: dict
    frames: np.ndarray | None = None  # (T, H, W, 3) uint8 before encoding (videos and images)
    audio: np.ndarray | None = None  # (N,) float32 muxed or written
    face_boxes: np.ndarray | None = None  # (T, 4) frame pixels
    mouth: np.ndarray | None = None  # (T,) opening shown
    mouth_centres: np.ndarray | None = None  # (T, 2) frame pixels of the closed mouth's centre
    swap_masks: np.ndarray | None = field(default=None, repr=False)  # (T, H, W) bool


def _place(rng: np.random.Generator, size: tuple[int, int], face_px: float) -> tuple[float, float]:
    """Face centre (fractions of the frame) anywhere the whole head fits."""
    w, h = size
    mx = min(0.45, (0.9 * face_px) / w + 0.02)
    my_top = min(0.45, (1.0 * face_px) / h + 0.02)
    my_bot = min(0.45, (1.1 * face_px) / h + 0.02)
    return float(rng.uniform(mx, 1 - mx)), float(rng.uniform(my_top, max(1 - my_bot, my_top + 1e-3)))


def _face_scene(item: ItemPlan, config: IndependentConfig, n_frames: int, rngs: dict, still: bool) -> tuple[Scene, dict]:
    w, h = item.size
    face_px = _face_px(item.face_u, min(w, h), config)
    identity = item.identity
    cap = _LFW_MAX_FACE_PX if identity.is_lfw else _ASTRONAUT_MAX_UPSCALE * _face_geometry(astronaut_face().landmarks)[2]
    face_px = min(face_px, cap)
    centre = _place(rngs["place"], item.size, face_px)
    roll = float(rngs["place"].uniform(-14, 14))
    scene = build_scene(identity, item.size, face_px, centre, roll, n_frames, FPS, rngs, still=still)
    marks = scene.landmarks(0)
    box = np.concatenate([marks[:27].min(axis=0), marks[:27].max(axis=0)])
    meta = {
        "face_source": identity.face, "face_height_px": _face_geometry(marks)[2], "face_box": box,
        "face_centre": [centre[0], centre[1]], "mouth_xy": marks[60:68].mean(axis=0), "roll_deg": roll,
        "orientation": "portrait" if h > w else "landscape", "resolution": [w, h], "backdrop": identity.backdrop,
        "camera": scene.camera.style, "sensor": scene.sensor.meta, "mirror": identity.mirror,
    }
    return scene, meta


def render_item(item: ItemPlan, config: IndependentConfig, keep: bool = False) -> Rendered:
    """Make one file. `keep` also returns the raw frames, audio and masks (tests)."""
    render = {"video": _render_video, "image": _render_image, "audio": _render_audio}[item.kind]
    out = render(item, config)
    out.meta = _rounded({"generator": "training.independent", "seed": item.seed, "index": item.index, **out.meta})
    if not keep:
        out.frames = out.audio = out.swap_masks = None
    return out


def _render_video(item: ItemPlan, config: IndependentConfig) -> Rendered:
    rngs = _rngs(item)
    n = int(round(item.seconds * FPS))
    sr = item.sample_rate
    scene, meta = _face_scene(item, config, n, rngs, still=False)
    total = item.seconds + 2 * _SPEECH_MARGIN_S
    speech = voice(item, item.identity, total, sr, rngs["speech"], config)
    mouth = mouth_track(speech.dry, sr, n, FPS, start_s=_SPEECH_MARGIN_S)
    start = int(round(_SPEECH_MARGIN_S * sr))
    length = int(round(item.seconds * sr))
    audio = speech.wet[start : start + length]
    family = item.family
    meta["speaker"] = _voice_meta(item.identity, config)
    if family == "av_offset":
        rng = rngs["offset"]
        offset = float(rng.uniform(*AV_OFFSET_RANGE_MS)) * (1 if rng.random() < 0.5 else -1)
        shift = int(round(offset / 1000 * sr))
        audio = speech.wet[start + shift : start + shift + length]
        meta["av_offset_ms"] = offset
    elif family == "audio_swap":
        other = voice(item, item.donor, total, sr, rngs["donor_speech"], config)
        audio = other.wet[start : start + length]
        meta["donor_group"] = item.donor.group
        meta["donor_speaker"] = _voice_meta(item.donor, config)
    elif family == "mouth_freeze":
        rng = rngs["freeze"]
        span = max(int(round(rng.uniform(0.4, 0.7) * n)), min(n, FPS))
        first = int(rng.integers(0, max(n - span, 0) + 1))
        held = float(mouth[first]) if rng.random() < 0.5 else float(rng.uniform(0.0, 0.15))
        mouth = mouth.copy()
        mouth[first : first + span] = held
        meta["freeze"] = {"start_s": first / FPS, "end_s": (first + span) / FPS, "held_opening": held}

    noise = rngs["noise"]
    frames = np.stack([scene.render(i, float(mouth[i]), noise) for i in range(n)])
    marks = [scene.landmarks(i) for i in range(n)]
    boxes = np.stack([np.concatenate([m[:27].min(axis=0), m[:27].max(axis=0)]) for m in marks])
    masks = None
    if family == "face_swap_poisson":
        rng = rngs["swap"]
        donor = Donor.of(item.donor)
        clone = "mixed" if rng.random() < 0.25 else "normal"
        masks = np.zeros(frames.shape[:3], bool)
        for i in range(n):
            frames[i], masks[i] = poisson_swap(frames[i], scene.landmarks(i), donor, float(mouth[i]), rng, clone)
        meta.update(donor_group=item.donor.group, donor_face=item.donor.face, clone=clone)

    rng = rngs["codec"]
    codec = item.codec.removesuffix("x2")
    low, high = _VIDEO_SPECS[codec][4]
    crf = int(rng.integers(low, high + 1))
    if item.codec.endswith("x2"):
        first = int(rng.integers(16, 24))
        data = encode_video(decode_frames(encode_video(frames, FPS, audio, sr, "h264", first)), FPS, audio, sr,
                            codec, crf)
        compression = f"h264_high+{codec}_{_crf_band(codec, crf)}"
        meta["double_compression"] = {"first": f"h264_crf{first}", "second": f"{codec}_crf{crf}"}
    else:
        data = encode_video(frames, FPS, audio, sr, codec, crf)
        compression = f"{codec}_{_crf_band(codec, crf)}"
    meta.update(codec=codec, container=_VIDEO_SPECS[codec][1], crf=crf, audio_codec=_VIDEO_SPECS[codec][3],
                sample_rate=sr, fps=FPS, seconds=item.seconds, n_frames=n, mouth_open=mouth)
    return Rendered(item, data, _VIDEO_SPECS[codec][2], compression, meta, frames, audio, boxes, mouth,
                    np.stack([m[60:68].mean(axis=0) for m in marks]), masks)


def _render_image(item: ItemPlan, config: IndependentConfig) -> Rendered:
    rngs = _rngs(item)
    if item.identity is None:
        rng = rngs["photo"]
        photo = _photo(item.photo)
        ph, pw = photo.shape[:2]
        area = rng.uniform(0.7, 1.0)
        cw, ch = int(pw * math.sqrt(area)), int(ph * math.sqrt(area))
        x0, y0 = int(rng.integers(0, pw - cw + 1)), int(rng.integers(0, ph - ch + 1))
        w = item.size[0]
        size = (w, int(round(w * ch / cw / 2)) * 2)
        interp = cv2.INTER_AREA if w < cw else cv2.INTER_CUBIC
        frame = cv2.resize(photo[y0 : y0 + ch, x0 : x0 + cw], size, interpolation=interp)
        data, ext, compression, settings = encode_image(frame, item.codec, rngs["codec"])
        meta = {"face": False, "photo": item.photo, "resolution": list(size), "format": ext, **settings}
        return Rendered(item, data, ext, compression, meta, frame[None])
    scene, meta = _face_scene(item, config, 1, rngs, still=True)
    opening = float(rngs["pose"].uniform(0, 0.5))
    frame = scene.render(0, opening, rngs["noise"])
    marks = scene.landmarks(0)
    masks = None
    if item.family == "face_swap_poisson":
        rng = rngs["swap"]
        clone = "mixed" if rng.random() < 0.25 else "normal"
        frame, mask = poisson_swap(frame, marks, Donor.of(item.donor), opening, rng, clone)
        masks = mask[None]
        meta.update(donor_group=item.donor.group, donor_face=item.donor.face, clone=clone)
    data, ext, compression, settings = encode_image(frame, item.codec, rngs["codec"])
    meta.update(face=True, format=ext, mouth_open=[opening], **settings)
    box = np.concatenate([marks[:27].min(axis=0), marks[:27].max(axis=0)])
    return Rendered(item, data, ext, compression, meta, frame[None], None, box[None], np.array([opening]),
                    marks[60:68].mean(axis=0)[None], masks)


def _render_audio(item: ItemPlan, config: IndependentConfig) -> Rendered:
    rngs = _rngs(item)
    sr = item.sample_rate
    speech = voice(item, item.identity, item.seconds, sr, rngs["speech"], config)
    audio = speech.wet
    meta = {"sample_rate": sr, "seconds": item.seconds, "format": item.codec, "speaker": _voice_meta(item.identity, config)}
    if item.family == "audio_resynth":
        rng = rngs["resynth"]
        if item.index % 4 in (1, 2):
            audio = lpc_resynthesis(audio, sr, rng)
            meta["method"] = "lpc"
        else:
            sigma = float(rng.uniform(0.4, 1.2))
            audio = phase_resynthesis(audio, sr, rng, sigma)
            meta["method"] = f"phase_sigma{sigma:.2f}"
    data = encode_audio(audio, sr, item.codec)
    compression = {"wav": "pcm", "flac": "flac", "mp3": "mp3_64k", "ogg": "opus"}[item.codec]
    return Rendered(item, data, item.codec, compression, meta, None, audio)


def manifest_entry(out: Rendered, path: str) -> ManifestEntry:
    item = out.item
    fake = int(item.family is not None)
    if item.kind == "video":
        labels = ModalityLabels(
            visual=int(item.family == "face_swap_poisson"), audio=0,
            av=int(item.family in ("audio_swap", "mouth_freeze", "av_offset")),
        )
    elif item.kind == "image":
        labels = ModalityLabels(visual=fake)
    else:
        labels = ModalityLabels(audio=fake)
    group = item.identity.group if item.identity is not None else f"indep{item.seed}-photo-{item.photo}"
    return ManifestEntry(
        path=path, label=fake, kind=item.kind, families=[item.family] if item.family else [],
        compression=out.compression, split="test", source=SOURCE, modality_labels=labels, group=group, meta=out.meta,
    )


def generate_independent(out_dir: Path, config: IndependentConfig, progress: bool = True) -> list[ManifestEntry]:
    """Write every file and `out_dir/manifest.jsonl`; returns the entries."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cv2.setNumThreads(1)
    entries = []
    for item in tqdm(plan_items(config), desc="independent", unit="file", disable=not progress):
        out = render_item(item, config)
        path = f"{item.path}.{out.ext}"
        (out_dir / path).parent.mkdir(parents=True, exist_ok=True)
        (out_dir / path).write_bytes(out.data)
        entries.append(manifest_entry(out, path))
    write_manifest(entries, out_dir / MANIFEST_NAME)
    return entries


def summarize(entries: list[ManifestEntry]) -> str:
    kinds = Counter(e.kind for e in entries)
    fams = Counter(f or "authentic" for e in entries for f in (e.families or [None]))
    return f"{len(entries)} files ({dict(kinds)}); " + ", ".join(f"{k} {v}" for k, v in sorted(fams.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="spectrashield generate-independent",
        description="An independent, test-only benchmark (another generator than `spectrashield generate`).",
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--videos", type=int, default=40)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--audio", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, nargs=2, default=(2.0, 3.0), metavar=("MIN", "MAX"))
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--real-speech-manifest", type=Path, default=None,
        help="a `spectrashield speech-corpus` manifest: voices become its bona fide recordings of --real-speech-source",
    )
    parser.add_argument("--real-speech-source", action="append", default=[],
                        help="e.g. codec2, pocketsphinx, alsa (held out of train-spoof with --hold-out-source)")
    args = parser.parse_args(argv)
    paths: tuple[str, ...] = ()
    if args.real_speech_manifest is not None:
        base = args.real_speech_manifest.resolve().parent
        paths = tuple(sorted(
            str(base / e.path) for e in read_manifest(args.real_speech_manifest)
            if e.label == 0 and e.source in set(args.real_speech_source)
        ))
        if not paths:
            parser.error(f"no bona fide recordings of {args.real_speech_source} in {args.real_speech_manifest}")
    config = IndependentConfig(n_videos=args.videos, n_images=args.images, n_audio=args.audio, seed=args.seed,
                               seconds=tuple(args.seconds), real_speech=paths)
    started = time.perf_counter()
    entries = generate_independent(args.out_dir, config, progress=not args.no_progress)
    print(f"{summarize(entries)} in {time.perf_counter() - started:.0f} s -> {args.out_dir / MANIFEST_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
