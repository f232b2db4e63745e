"""`media.face_detail`: how much fine detail a face crop holds, so a face model abstains on one that shows none."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage.data import astronaut

from media import decode_media, face_detail
from pipeline.config import VisualConfig
from tests.mediagen import encode_image

MINIMUM = VisualConfig().min_face_detail


@pytest.fixture(scope="module")
def face_crop() -> np.ndarray:
    clip = decode_media(encode_image(astronaut(), "png"))
    assert clip.face_found.all()
    return clip.face_crops[0]


def _enlarged_from(crop: np.ndarray, side: int) -> np.ndarray:
    small = cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, crop.shape[:2][::-1], interpolation=cv2.INTER_CUBIC)


def test_a_face_seen_at_its_own_resolution_shows_detail(face_crop: np.ndarray) -> None:
    assert face_detail(face_crop[None])[0] > 4 * MINIMUM


@pytest.mark.parametrize("side", [16, 24, 28])
def test_a_face_enlarged_from_a_thumbnail_shows_none(face_crop: np.ndarray, side: int) -> None:
    assert face_detail(_enlarged_from(face_crop, side)[None])[0] < MINIMUM


def test_detail_grows_with_the_picture_the_face_was_taken_from(face_crop: np.ndarray) -> None:
    sides = [24, 32, 48, 64, 96, 128]
    detail = face_detail(np.stack([_enlarged_from(face_crop, s) if s < 128 else face_crop for s in sides]))
    assert np.all(np.diff(detail) > 0), detail
    assert detail[sides.index(48)] > MINIMUM  # a face the size the detector must find is judged


def test_a_blurred_face_shows_none_and_noise_or_jpeg_do_not_take_detail_away(face_crop: np.ndarray) -> None:
    blurred = cv2.GaussianBlur(face_crop, (0, 0), 3.0)
    assert face_detail(blurred[None])[0] < MINIMUM
    rng = np.random.default_rng(0)
    noisy = np.clip(face_crop + rng.normal(0, 6, face_crop.shape), 0, 255).astype(np.uint8)
    ok, jpeg = cv2.imencode(".jpg", face_crop, [cv2.IMWRITE_JPEG_QUALITY, 50])
    assert ok
    plain = face_detail(face_crop[None])[0]
    assert face_detail(noisy[None])[0] >= plain * 0.9
    assert face_detail(cv2.imdecode(jpeg, cv2.IMREAD_UNCHANGED)[None])[0] > MINIMUM


def test_grey_and_flat_crops_and_bad_shapes() -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    grey = (rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114]))
    np.testing.assert_allclose(face_detail(rgb), face_detail(grey))
    assert face_detail(np.full((1, 32, 32, 3), 128, np.uint8)).tolist() == [0.0]
    assert np.all((face_detail(rgb) > 0) & (face_detail(rgb) <= 1))
    with pytest.raises(ValueError, match="crops must be"):
        face_detail(np.zeros((32, 32), np.uint8))
