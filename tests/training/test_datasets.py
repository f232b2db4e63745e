"""Public-dataset adapters on tiny trees fabricated in each dataset's own layout.

Media files are empty placeholders: the adapters read metadata and never decode, so an empty
file is as good as a real video here.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import pytest

from training.datasets import (
    ADAPTERS,
    DatasetLayoutError,
    asvspoof2019la_manifest,
    check_splits,
    dfdc_manifest,
    fakeavceleb_manifest,
    ffpp_manifest,
    get_adapter,
    main,
    split_groups,
)
from training.manifest import ManifestEntry, ModalityLabels, read_manifest


def _touch(root: Path, *paths: str) -> None:
    for path in paths:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(b"")


def _by_path(entries: list[ManifestEntry]) -> dict[str, ManifestEntry]:
    by_path = {entry.path: entry for entry in entries}
    assert len(by_path) == len(entries), "an adapter listed a file twice"
    return by_path


def _assert_groups_stay_in_one_split(entries: list[ManifestEntry]) -> None:
    splits_of: dict[str | None, set[str]] = defaultdict(set)
    for entry in entries:
        assert entry.group, f"{entry.path} has no group"
        splits_of[entry.group].add(entry.split)
    leaking = {group: splits for group, splits in splits_of.items() if len(splits) > 1}
    assert not leaking, f"groups in more than one split: {leaking}"


def _assert_paths_resolve(entries: list[ManifestEntry], base: Path) -> None:
    for entry in entries:
        assert not Path(entry.path).is_absolute()
        assert (base / entry.path).is_file(), entry.path


# ---------------------------------------------------------------------------------------------
# Splits


def test_split_groups_matches_fractions_for_equal_groups() -> None:
    assigned = split_groups({f"g{i:03d}": 1 for i in range(100)}, (("train", 0.7), ("val", 0.1), ("test", 0.2)), 3)
    counts = {name: sum(split == name for split in assigned.values()) for name in ("train", "val", "test")}
    assert counts == {"train": 70, "val": 10, "test": 20}


def test_split_groups_is_seeded_and_independent_of_listing_order() -> None:
    sizes = {f"g{i}": 1 + i % 3 for i in range(40)}
    reordered = dict(reversed(list(sizes.items())))
    fractions = (("train", 0.5), ("test", 0.5))
    assert split_groups(sizes, fractions, 7) == split_groups(reordered, fractions, 7)
    assert split_groups(sizes, fractions, 7) != split_groups(sizes, fractions, 8)


def test_split_groups_weights_groups_by_size() -> None:
    sizes = {"huge": 90} | {f"small{i}": 1 for i in range(10)}
    assigned = split_groups(sizes, (("train", 0.9), ("test", 0.1)), 0)
    assert assigned["huge"] == "train"
    assert sum(sizes[g] for g, split in assigned.items() if split == "test") <= 10


@pytest.mark.parametrize(
    ("splits", "message"),
    [
        ((("train", 0.5), ("holdout", 0.5)), "unknown split 'holdout'"),
        ((("train", 0.5), ("train", 0.5)), "given twice"),
        ((("train", -0.1), ("test", 1.0)), ">= 0"),
        ((("train", 0.0),), "all be zero"),
    ],
)
def test_check_splits_rejects_bad_fractions(splits: tuple[tuple[str, float], ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_splits(splits)


# ---------------------------------------------------------------------------------------------
# FaceForensics++


def _ffpp_tree(root: Path, ids: int = 8) -> None:
    """youtube originals 000..ids-1 at c23 (000 and 003 also at c40), fakes from pairs (0,1), (2,3), ...

    Plus a DeepFakeDetection corner and a masks folder that must not be read as videos.
    """
    _touch(root, *(f"original_sequences/youtube/c23/videos/{i:03d}.mp4" for i in range(ids)))
    _touch(root, "original_sequences/youtube/c40/videos/000.mp4", "original_sequences/youtube/c40/videos/003.mp4")
    for a in range(0, ids, 2):
        b = a + 1
        _touch(root, f"manipulated_sequences/Deepfakes/c23/videos/{a:03d}_{b:03d}.mp4")
        _touch(root, f"manipulated_sequences/Deepfakes/c23/videos/{b:03d}_{a:03d}.mp4")
    _touch(
        root,
        "manipulated_sequences/Face2Face/c40/videos/000_001.mp4",
        "manipulated_sequences/FaceShifter/raw/videos/002_003.mp4",
        "manipulated_sequences/NeuralTextures/c23/videos/003_002.mp4",
        "manipulated_sequences/Deepfakes/masks/videos/000_001.mp4",
        "original_sequences/actors/c23/videos/01__exit_phone_room.mp4",
        "original_sequences/actors/c23/videos/02__kitchen_pan.mp4",
        "manipulated_sequences/DeepFakeDetection/c23/videos/01_02__exit_phone_room__YVGY8LOK.mp4",
    )


def test_ffpp_labels_families_compression_and_groups(tmp_path: Path) -> None:
    _ffpp_tree(tmp_path)
    entries = ffpp_manifest(tmp_path)
    by_path = _by_path(entries)
    assert len(entries) == 8 + 2 + 8 + 3 + 2 + 1, sorted(by_path)
    assert not any("masks" in path for path in by_path)

    original = by_path["original_sequences/youtube/c40/videos/000.mp4"]
    assert (original.label, original.families, original.compression) == (0, [], "c40")
    assert original.modality_labels == ModalityLabels(visual=0)
    fake = by_path["manipulated_sequences/Deepfakes/c23/videos/000_001.mp4"]
    assert (fake.label, fake.families, fake.compression, fake.kind) == (1, ["deepfakes"], "c23", "video")
    assert fake.modality_labels == ModalityLabels(visual=1)
    assert fake.meta["target"] == "000" and fake.meta["source"] == "001"
    assert by_path["manipulated_sequences/Face2Face/c40/videos/000_001.mp4"].families == ["face2face"]
    assert by_path["manipulated_sequences/FaceShifter/raw/videos/002_003.mp4"].compression == "raw"
    assert by_path["manipulated_sequences/NeuralTextures/c23/videos/003_002.mp4"].families == ["neuraltextures"]
    assert {entry.source for entry in entries} == {"ffpp"}

    # Both originals of a swap pair and every fake made from them form one group.
    pair = {path for path, entry in by_path.items() if entry.group == "ffpp:000+001"}
    assert pair == {
        "original_sequences/youtube/c23/videos/000.mp4",
        "original_sequences/youtube/c40/videos/000.mp4",
        "original_sequences/youtube/c23/videos/001.mp4",
        "manipulated_sequences/Deepfakes/c23/videos/000_001.mp4",
        "manipulated_sequences/Deepfakes/c23/videos/001_000.mp4",
        "manipulated_sequences/Face2Face/c40/videos/000_001.mp4",
    }
    dfd = by_path["manipulated_sequences/DeepFakeDetection/c23/videos/01_02__exit_phone_room__YVGY8LOK.mp4"]
    assert (dfd.label, dfd.families, dfd.group) == (1, ["deepfakedetection"], "ffpp:actor:01")
    assert by_path["original_sequences/actors/c23/videos/01__exit_phone_room.mp4"].group == "ffpp:actor:01"
    _assert_groups_stay_in_one_split(entries)
    _assert_paths_resolve(entries, tmp_path)


def test_ffpp_official_splits_are_kept_and_fusion_is_carved_from_train(tmp_path: Path) -> None:
    _ffpp_tree(tmp_path, ids=20)
    pairs = [[f"{a:03d}", f"{a + 1:03d}"] for a in range(0, 20, 2)]
    _touch(tmp_path, "splits/x")
    (tmp_path / "splits/train.json").write_text(json.dumps(pairs[:8]))
    (tmp_path / "splits/val.json").write_text(json.dumps(pairs[8:9]))
    (tmp_path / "splits/test.json").write_text(json.dumps(pairs[9:]))
    entries = ffpp_manifest(tmp_path, split_seed=1)
    by_path = _by_path(entries)
    youtube_split = {
        path.rsplit("/", 1)[1][:3]: entry.split for path, entry in by_path.items() if "/youtube/c23/" in path
    }
    assert youtube_split["016"] == youtube_split["017"] == "val"
    assert youtube_split["018"] == youtube_split["019"] == "test"
    train_part = [youtube_split[f"{i:03d}"] for i in range(16)]
    assert set(train_part) == {"train", "fusion"}
    assert train_part.count("fusion") == 2  # one of eight equal pairs: 0.1 / (0.7 + 0.1) of train
    _assert_groups_stay_in_one_split(entries)


def test_ffpp_split_files_that_contradict_a_fake_are_an_error(tmp_path: Path) -> None:
    _ffpp_tree(tmp_path, ids=4)
    _touch(tmp_path, "splits/x")
    (tmp_path / "splits/train.json").write_text('[["000", "002"]]')
    (tmp_path / "splits/val.json").write_text('[["001", "003"]]')
    (tmp_path / "splits/test.json").write_text("[]")
    with pytest.raises(DatasetLayoutError, match=r"000_001\.mp4 joins ids 000 and 001"):
        ffpp_manifest(tmp_path)


def test_ffpp_incomplete_split_files_are_an_error(tmp_path: Path) -> None:
    _ffpp_tree(tmp_path, ids=2)
    _touch(tmp_path, "splits/x")
    (tmp_path / "splits/train.json").write_text("[]")
    with pytest.raises(DatasetLayoutError, match=r"splits/val\.json is missing"):
        ffpp_manifest(tmp_path)


def test_ffpp_wrong_root_names_what_is_missing_and_the_layout(tmp_path: Path) -> None:
    _touch(tmp_path, "videos/000.mp4")
    with pytest.raises(DatasetLayoutError) as error:
        ffpp_manifest(tmp_path)
    message = str(error.value)
    assert "original_sequences" in message and "manipulated_sequences" in message
    assert "manipulated_sequences/<Method>/{raw,c23,c40}/videos/<target>_<source>.mp4" in message
    with pytest.raises(DatasetLayoutError, match="is not a directory"):
        ffpp_manifest(tmp_path / "absent")


def test_paths_are_relative_to_the_given_folder(tmp_path: Path) -> None:
    root = tmp_path / "data" / "ffpp"
    _ffpp_tree(root, ids=2)
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    entries = ffpp_manifest(root, relative_to=manifests)
    assert all(entry.path.startswith("../data/ffpp/") for entry in entries)
    _assert_paths_resolve(entries, manifests)


# ---------------------------------------------------------------------------------------------
# DFDC


def _dfdc_part(root: Path, part: str, records: dict[str, dict], missing: tuple[str, ...] = ()) -> None:
    (root / part).mkdir(parents=True)
    (root / part / "metadata.json").write_text(json.dumps(records))
    _touch(root, *(f"{part}/{name}" for name in records if name not in missing))


def _dfdc_train_records(prefix: str, originals: int) -> dict[str, dict]:
    records: dict[str, dict] = {}
    for i in range(originals):
        records[f"{prefix}real{i}.mp4"] = {"label": "REAL", "split": "train", "original": None}
        records[f"{prefix}fake{i}.mp4"] = {"label": "FAKE", "split": "train", "original": f"{prefix}real{i}.mp4"}
    return records


def test_dfdc_train_and_both_test_schemas(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _dfdc_part(tmp_path, "dfdc_train_part_0", _dfdc_train_records("a", 10), missing=("afake9.mp4",))
    _dfdc_part(tmp_path, "dfdc_train_part_1", _dfdc_train_records("b", 10) | {"bnoorig.mp4": {"label": "REAL"}})
    (tmp_path / "test").mkdir()
    (tmp_path / "test/labels.csv").write_text("filename,label\ntreal.mp4,0\ntfake.mp4,1\n")
    _touch(tmp_path, "test/treal.mp4", "test/tfake.mp4")
    _dfdc_part(tmp_path, "public_test", {"p1.mp4": {"is_fake": 1, "original": "p0.mp4"}, "p0.mp4": {"is_fake": 0}})

    with caplog.at_level(logging.WARNING, logger="training.datasets"):
        entries = dfdc_manifest(tmp_path)
    assert "1 of 45 files" in caplog.text and "afake9.mp4" in caplog.text
    by_path = _by_path(entries)
    assert len(entries) == 44

    fake = by_path["dfdc_train_part_0/afake3.mp4"]
    assert (fake.label, fake.families, fake.kind, fake.source) == (1, ["dfdc"], "video", "dfdc")
    assert fake.modality_labels == ModalityLabels()
    assert fake.group == by_path["dfdc_train_part_0/areal3.mp4"].group == "dfdc:areal3"
    real = by_path["dfdc_train_part_0/areal3.mp4"]
    assert (real.label, real.families) == (0, [])
    assert real.modality_labels == ModalityLabels(visual=0, audio=0, av=0)

    assert (by_path["test/tfake.mp4"].label, by_path["test/treal.mp4"].label) == (1, 0)
    assert (by_path["public_test/p1.mp4"].label, by_path["public_test/p0.mp4"].label) == (1, 0)
    assert by_path["public_test/p1.mp4"].group == by_path["public_test/p0.mp4"].group
    test_paths = {path for path, entry in by_path.items() if entry.split == "test"}
    assert test_paths == {"test/treal.mp4", "test/tfake.mp4", "public_test/p1.mp4", "public_test/p0.mp4"}
    train_splits = {entry.split for path, entry in by_path.items() if path.startswith("dfdc_train_part_")}
    assert train_splits == {"train", "val", "fusion"}
    _assert_groups_stay_in_one_split(entries)
    _assert_paths_resolve(entries, tmp_path)


def test_dfdc_without_a_test_folder_carves_every_split_from_train(tmp_path: Path) -> None:
    _dfdc_part(tmp_path, "dfdc_train_part_0", _dfdc_train_records("x", 20))
    entries = dfdc_manifest(tmp_path, split_seed=5)
    counts = {split: sum(entry.split == split for entry in entries) for split in ("train", "val", "fusion", "test")}
    assert counts == {"train": 28, "val": 4, "fusion": 4, "test": 4}
    _assert_groups_stay_in_one_split(entries)
    assert entries == dfdc_manifest(tmp_path, split_seed=5)


def test_dfdc_kaggle_sample_folder_as_root(tmp_path: Path) -> None:
    _dfdc_part(tmp_path, "train_sample_videos", _dfdc_train_records("s", 2))
    entries = dfdc_manifest(tmp_path / "train_sample_videos")
    assert sorted(entry.path for entry in entries) == ["sfake0.mp4", "sfake1.mp4", "sreal0.mp4", "sreal1.mp4"]


def test_dfdc_wrong_root_and_unknown_schema_are_explained(tmp_path: Path) -> None:
    _touch(tmp_path, "videos/a.mp4")
    explained = r"no metadata\.json or labels\.csv(.|\n)*dfdc_train_part_<n>/metadata\.json"
    with pytest.raises(DatasetLayoutError, match=explained):
        dfdc_manifest(tmp_path)
    _dfdc_part(tmp_path, "part", {"a.mp4": {"fake": True}})
    with pytest.raises(DatasetLayoutError, match="neither 'label' .* nor 'is_fake'"):
        dfdc_manifest(tmp_path)


def test_dfdc_labels_csv_needs_its_columns(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("name,is_fake\na.mp4,1\n")
    with pytest.raises(DatasetLayoutError, match="not filename,label"):
        dfdc_manifest(tmp_path)


# ---------------------------------------------------------------------------------------------
# FakeAVCeleb

# (source, target1, target2, method, category, type, file name)
_FAKEAVCELEB_ROWS = [
    ("id00076", "-", "-", "real", "A", "RealVideo-RealAudio", "00109.mp4"),
    ("id00076", "-", "-", "rtvc", "B", "RealVideo-FakeAudio", "00109_fake.mp4"),
    ("id00166", "-", "-", "real", "A", "RealVideo-RealAudio", "00010.mp4"),
    ("id00166", "id00076", "-", "faceswap", "C", "FakeVideo-RealAudio", "00010_id00076_faceswap.mp4"),
    ("id00166", "id00076", "3", "fsgan-wav2lip", "D", "FakeVideo-FakeAudio", "00010_3_id00076_fsgan-wav2lip.mp4"),
    ("id00200", "-", "-", "real", "A", "RealVideo-RealAudio", "missing.mp4"),
]
_NAMED = "source,target1,target2,method,category,type,race,gender"


def _fakeavceleb_csv(variant: str) -> str:
    """meta_data.csv as the releases (and re-saved copies of them) spell it."""
    lines = {
        "v1.2": [f"{_NAMED},path"],
        "trailing-comma": [f"{_NAMED},path,"],
        "named": [f"{_NAMED},filename,path,"],
        "pandas-index": [f",{_NAMED},filename,path"],
        "index-without-header": [f"{_NAMED},path"],
    }[variant]
    for i, (source, t1, t2, method, category, kind, name) in enumerate(_FAKEAVCELEB_ROWS):
        folder = f"FakeAVCeleb/{kind}/African/men/{source}"
        row = f"{source},{t1},{t2},{method},{category},{kind},African,men,{name},{folder}"
        if variant in ("pandas-index", "index-without-header"):
            row = f"{i},{row}"
        lines.append(row + ("," if variant in ("trailing-comma", "named") else ""))
    return "\n".join(lines) + "\n"


def _fakeavceleb_tree(root: Path, variant: str, under: str = "") -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "meta_data.csv").write_text(_fakeavceleb_csv(variant))
    for source, *_, kind, name in _FAKEAVCELEB_ROWS:
        if name != "missing.mp4":
            _touch(root, f"{under}{kind}/African/men/{source}/{name}")


@pytest.mark.parametrize("variant", ["v1.2", "trailing-comma", "named", "pandas-index", "index-without-header"])
def test_fakeavceleb_categories_and_header_variants(tmp_path: Path, variant: str) -> None:
    _fakeavceleb_tree(tmp_path, variant)
    entries = fakeavceleb_manifest(tmp_path)
    by_path = _by_path(entries)
    assert len(entries) == 5

    def entry(kind: str, source: str, name: str) -> ManifestEntry:
        return by_path[f"{kind}/African/men/{source}/{name}"]

    real = entry("RealVideo-RealAudio", "id00076", "00109.mp4")
    assert (real.label, real.families, real.kind, real.source) == (0, [], "video", "fakeavceleb")
    assert real.modality_labels == ModalityLabels(visual=0, audio=0, av=0)
    fake_audio = entry("RealVideo-FakeAudio", "id00076", "00109_fake.mp4")
    assert (fake_audio.label, fake_audio.families) == (1, ["rtvc"])
    assert fake_audio.modality_labels == ModalityLabels(visual=0, audio=1, av=1)
    fake_video = entry("FakeVideo-RealAudio", "id00166", "00010_id00076_faceswap.mp4")
    assert (fake_video.label, fake_video.families) == (1, ["faceswap"])
    assert fake_video.modality_labels == ModalityLabels(visual=1, audio=0, av=1)
    assert fake_video.meta["category"] == "C" and fake_video.meta["target1"] == "id00076"
    both = entry("FakeVideo-FakeAudio", "id00166", "00010_3_id00076_fsgan-wav2lip.mp4")
    assert (both.label, both.families) == (1, ["fsgan", "wav2lip"])
    assert both.modality_labels == ModalityLabels(visual=1, audio=1, av=1)
    assert {e.group for e in entries} == {"fakeavceleb:id00076", "fakeavceleb:id00166"}
    _assert_groups_stay_in_one_split(entries)
    _assert_paths_resolve(entries, tmp_path)


def test_fakeavceleb_category_folders_one_level_down(tmp_path: Path) -> None:
    _fakeavceleb_tree(tmp_path, "v1.2", under="FakeAVCeleb/")
    entries = fakeavceleb_manifest(tmp_path)
    assert len(entries) == 5 and all(entry.path.startswith("FakeAVCeleb/") for entry in entries)
    _assert_paths_resolve(entries, tmp_path)


def test_fakeavceleb_category_that_contradicts_type_is_an_error(tmp_path: Path) -> None:
    _fakeavceleb_tree(tmp_path, "v1.2")
    text = (tmp_path / "meta_data.csv").read_text().replace("rtvc,B,", "rtvc,C,")
    (tmp_path / "meta_data.csv").write_text(text)
    with pytest.raises(DatasetLayoutError, match=r"meta_data\.csv:3: category 'C' contradicts"):
        fakeavceleb_manifest(tmp_path)


def test_fakeavceleb_wrong_root_is_explained(tmp_path: Path) -> None:
    _touch(tmp_path, "RealVideo-RealAudio/African/men/id00076/00109.mp4")
    with pytest.raises(DatasetLayoutError, match=r"meta_data\.csv is missing(.|\n)*RealVideo-FakeAudio/<race>"):
        fakeavceleb_manifest(tmp_path)
    (tmp_path / "meta_data.csv").write_text(_fakeavceleb_csv("v1.2"))
    (tmp_path / "RealVideo-RealAudio/African/men/id00076/00109.mp4").unlink()
    for folder in sorted(tmp_path.rglob("*"), reverse=True):
        if folder.is_dir():
            folder.rmdir()
    with pytest.raises(DatasetLayoutError, match="none of RealVideo-RealAudio"):
        fakeavceleb_manifest(tmp_path)


# ---------------------------------------------------------------------------------------------
# ASVspoof 2019 LA


def _asvspoof_tree(la: Path) -> None:
    protocols = la / "ASVspoof2019_LA_cm_protocols"
    protocols.mkdir(parents=True)
    parts = {
        "train": ("train.trn", "T", 8, "A01"),
        "dev": ("dev.trl", "D", 2, "A02"),
        "eval": ("eval.trl", "E", 2, "A17"),
    }
    for part, (suffix, letter, speakers, system) in parts.items():
        lines = []
        for s in range(speakers):
            speaker = f"LA_{letter}{s:03d}"
            lines.append(f"{speaker} LA_{letter}_{s}0 - - bonafide")
            lines.append(f"{speaker} LA_{letter}_{s}1 - {system} spoof")
        (protocols / f"ASVspoof2019.LA.cm.{suffix}.txt").write_text("\n".join(lines) + "\n")
        for line in lines:
            _touch(la, f"ASVspoof2019_LA_{part}/flac/{line.split()[1]}.flac")


def test_asvspoof2019la_official_parts_and_fusion_by_speaker(tmp_path: Path) -> None:
    _asvspoof_tree(tmp_path / "LA")
    entries = asvspoof2019la_manifest(tmp_path)
    by_path = _by_path(entries)
    assert len(entries) == 24

    spoof = by_path["LA/ASVspoof2019_LA_train/flac/LA_T_01.flac"]
    assert (spoof.label, spoof.families, spoof.kind, spoof.compression) == (1, ["A01"], "audio", "none")
    assert spoof.modality_labels == ModalityLabels(audio=1)
    assert spoof.meta == {"speaker": "LA_T000", "system_id": "A01", "protocol": "train"}
    bona = by_path["LA/ASVspoof2019_LA_eval/flac/LA_E_10.flac"]
    assert (bona.label, bona.families, bona.split) == (0, [], "test")
    assert bona.modality_labels == ModalityLabels(audio=0)
    assert by_path["LA/ASVspoof2019_LA_eval/flac/LA_E_11.flac"].families == ["A17"]

    assert {e.split for p, e in by_path.items() if "_dev/" in p} == {"val"}
    train_speakers = {e.meta["speaker"]: e.split for p, e in by_path.items() if "_train/" in p}
    assert sorted(train_speakers.values()).count("fusion") == 1  # 0.1 / (0.7 + 0.1) of eight speakers
    assert set(train_speakers.values()) == {"train", "fusion"}
    _assert_groups_stay_in_one_split(entries)
    _assert_paths_resolve(entries, tmp_path)

    from_la = asvspoof2019la_manifest(tmp_path / "LA")
    assert from_la[0].path == "ASVspoof2019_LA_train/flac/LA_T_00.flac"


def test_asvspoof2019la_wrong_root_and_bad_lines_are_explained(tmp_path: Path) -> None:
    explained = r"ASVspoof2019_LA_cm_protocols is missing(.|\n)*flac/<AUDIO_FILE_NAME>"
    with pytest.raises(DatasetLayoutError, match=explained):
        asvspoof2019la_manifest(tmp_path)
    _asvspoof_tree(tmp_path)
    protocol = tmp_path / "ASVspoof2019_LA_cm_protocols/ASVspoof2019.LA.cm.dev.trl.txt"
    protocol.write_text("LA_D000 LA_D_00 - bonafide\n")
    with pytest.raises(DatasetLayoutError, match=r"dev\.trl\.txt:1: expected"):
        asvspoof2019la_manifest(tmp_path)


# ---------------------------------------------------------------------------------------------
# Registry and command line


def test_registry_names_every_adapter() -> None:
    assert ADAPTERS == {
        "ffpp": ffpp_manifest,
        "dfdc": dfdc_manifest,
        "fakeavceleb": fakeavceleb_manifest,
        "asvspoof2019la": asvspoof2019la_manifest,
    }
    with pytest.raises(KeyError, match="known: asvspoof2019la, dfdc, fakeavceleb, ffpp"):
        get_adapter("celebdf")


def test_main_writes_a_manifest_whose_paths_resolve_from_its_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "FakeAVCeleb_v1.2"
    _fakeavceleb_tree(root, "v1.2")
    out = tmp_path / "manifests" / "fakeavceleb.jsonl"
    assert main(["fakeavceleb", str(root), str(out), "--split-seed", "2", "--splits", "train=0.5,test=0.5"]) == 0
    entries = list(read_manifest(out))
    assert len(entries) == 5 and {entry.split for entry in entries} <= {"train", "test"}
    _assert_paths_resolve(entries, out.parent)
    assert f"wrote 5 entries to {out}" in capsys.readouterr().out

    assert main(["ffpp", str(root), str(tmp_path / "x.jsonl")]) == 2
    assert "original_sequences" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["celebdf", str(root), str(out)])
