"""The test-only unseen-voices set, built from a tiny tree in the Asterisk prompts' installed layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.manifest import ManifestEntry, ModalityLabels, read_manifest, write_manifest
from training.sources import SourceLayoutError
from training.speech_corpus import write_wav
from training.unseen_speech import build_unseen


def _prompts(root: Path, n: int) -> None:
    """`n` prompts per voice. The packages ship GSM; these are PCM WAVs under the .gsm name (sox is not a
    test dependency; `read_wav` opens PCM directly whatever the name)."""
    rng = np.random.default_rng(0)
    for folder in ("es", "fr"):
        for i in range(n):
            sub = "digits" if i % 2 else "."
            write_wav(root / folder / sub / f"prompt-{i}.gsm", rng.uniform(-0.3, 0.3, 800), 8000)


def _corpus(folder: Path) -> Path:
    def row(path: str, label: int, split: str, source: str, speaker: str) -> ManifestEntry:
        return ManifestEntry(path=path, label=label, kind="audio", split=split, source=source,
                             modality_labels=ModalityLabels(audio=label), meta={"speaker": speaker})
    rows = [
        row("bona_fide/a.wav", 0, "test", "asterisk", "allison"),
        row("bona_fide/alsa.wav", 0, "train", "alsa", "alsa"),
        row("spoof/flite-1.wav", 1, "test", "flite", "slt"),
        row("spoof/flite-2.wav", 1, "train", "flite", "slt"),
        row("spoof/world-alsa.wav", 1, "test", "vocoder:world", "alsa"),  # re-synthesis of a held-out voice
        row("spoof/world-allison.wav", 1, "test", "vocoder:world", "allison"),
    ]
    for r in rows:
        write_wav(folder / r.path, np.zeros(1600), 16_000)
    write_manifest(rows, folder / "manifest.jsonl")
    return folder / "manifest.jsonl"


def test_the_unseen_set_holds_sampled_prompts_and_only_test_spoofs_of_voices_not_held_out(tmp_path: Path) -> None:
    root = tmp_path / "sounds"
    _prompts(root, 6)
    corpus = _corpus(tmp_path / "speech")
    n = build_unseen(tmp_path / "unseen", corpus, root, per_voice=4, seed=0)
    rows = list(read_manifest(tmp_path / "unseen" / "manifest.jsonl"))
    assert n == len(rows) == 4 + 4 + 2
    bona = [r for r in rows if r.label == 0]
    assert {r.meta["speaker"] for r in bona} == {"es_co", "armelle"} and all(r.split == "test" for r in rows)
    assert all((tmp_path / "unseen" / r.path).is_file() and r.modality_labels.audio == r.label for r in rows)
    assert sorted(Path(r.path).name for r in rows if r.label == 1) == ["flite-1.wav", "world-allison.wav"]
    assert all((tmp_path / "unseen" / r.path).resolve() == (tmp_path / "speech" / r.path[len("../speech/"):]).resolve()
               for r in rows if r.label == 1)
    again = build_unseen(tmp_path / "again", corpus, root, per_voice=4, seed=0)
    assert again == n and [r.path for r in read_manifest(tmp_path / "again" / "manifest.jsonl")] == [r.path for r in rows]
    other = [r.path for r in read_manifest(tmp_path / "again" / "manifest.jsonl") if r.label == 0]
    build_unseen(tmp_path / "seed1", corpus, root, per_voice=4, seed=1)
    assert [r.path for r in read_manifest(tmp_path / "seed1" / "manifest.jsonl") if r.label == 0] != other


def test_too_few_prompts_is_a_layout_error(tmp_path: Path) -> None:
    root = tmp_path / "sounds"
    _prompts(root, 3)
    with pytest.raises(SourceLayoutError, match="asterisk-prompt-es-co"):
        build_unseen(tmp_path / "unseen", _corpus(tmp_path / "speech"), root, per_voice=4)
