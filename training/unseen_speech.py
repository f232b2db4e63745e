"""A test-only audio set of real voices that no model trains on: `spectrashield unseen-speech OUT`.

Bona fide: two real Asterisk voices that `make data` does not install and no manifest of ours holds,
Colombian Spanish (`asterisk-prompt-es-co`) and French by Armelle Desjardins (`asterisk-prompt-fr-armelle`),
both CC-BY-SA, shipped as GSM 06.10 prompts (a telephone codec that no training augmentation uses);
`make unseen-speech` installs them. `per_voice` random prompts of each (seeded), converted by sox to
16-bit 8 kHz WAV. Spoofed: the speech corpus's test-split spoofs, minus the vocoder re-syntheses of the
held-out sources' speakers (their real voices are held out too). Never used for training or thresholds:
`spectrashield eval --manifest OUT/manifest.jsonl` measures on it.
"""

from __future__ import annotations

import argparse
import logging
import random
from collections.abc import Sequence
from pathlib import Path

from training.manifest import ManifestEntry, ModalityLabels, read_manifest, write_manifest
from training.sources import ASTERISK_ROOT, SourceLayoutError
from training.speech_corpus import read_wav, write_wav
from training.spoof import _speaker, held_out_speakers

logger = logging.getLogger(__name__)

# speaker -> (folder under the Asterisk sounds root, language, Debian package)
UNSEEN_VOICES: dict[str, tuple[str, str, str]] = {
    "es_co": ("es", "es", "asterisk-prompt-es-co"),
    "armelle": ("fr", "fr", "asterisk-prompt-fr-armelle"),
}
HELD_OUT_SOURCES = ("codec2", "pocketsphinx", "alsa")


def build_unseen(
    out: Path, corpus_manifest: Path, root: Path = ASTERISK_ROOT, per_voice: int = 150, seed: int = 0,
    hold_out_sources: Sequence[str] = HELD_OUT_SOURCES,
) -> int:
    """Write `out/manifest.jsonl` (every row split "test") and the converted prompts; returns the row count."""
    rng = random.Random(seed)
    rows: list[ManifestEntry] = []
    for speaker, (folder, language, package) in UNSEEN_VOICES.items():
        prompts = sorted((root / folder).rglob("*.gsm"))
        if len(prompts) < per_voice:
            raise SourceLayoutError(
                f"{package}: {len(prompts)} GSM prompts in {root / folder}, {per_voice} wanted "
                f"(`make unseen-speech` installs it)"
            )
        for prompt in rng.sample(prompts, per_voice):
            rel = Path("bona") / speaker / f"{prompt.stem}.wav"
            samples, rate = read_wav(prompt)
            write_wav(out / rel, samples, rate)
            rows.append(ManifestEntry(
                path=str(rel), label=0, kind="audio", split="test", source=package, group=speaker,
                modality_labels=ModalityLabels(audio=0),
                meta={"speaker": speaker, "language": language, "engine": "bona_fide", "package": package,
                      "licence": "CC-BY-SA-3.0", "codec": "gsm"},
            ))
    corpus = list(read_manifest(corpus_manifest))
    held = held_out_speakers(corpus, hold_out_sources)
    relative = Path("..") / corpus_manifest.parent.name
    n_bona_fide = len(rows)
    for e in corpus:
        if e.split == "test" and e.label == 1 and _speaker(e) not in held:
            rows.append(e.model_copy(update={"path": str(relative / e.path)}))
    logger.info("%d bona fide prompts, %d spoofed files", n_bona_fide, len(rows) - n_bona_fide)
    return write_manifest(rows, out / "manifest.jsonl")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spectrashield unseen-speech", description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="output folder, beside the corpus's (manifest.jsonl, bona/)")
    parser.add_argument("--corpus", type=Path, default=Path("build/speech/manifest.jsonl"),
                        help="the speech corpus manifest whose test-split spoofs are the fake side")
    parser.add_argument("--root", type=Path, default=ASTERISK_ROOT)
    parser.add_argument("--per-voice", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.out.resolve().parent != args.corpus.resolve().parent.parent:
        parser.error("OUT must sit beside the corpus folder (its manifest points at ../CORPUS/...)")
    print(build_unseen(args.out, args.corpus, args.root, args.per_voice, args.seed), "rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
