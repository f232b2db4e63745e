"""Real human speech (bona fide) that ships inside Debian packages, read from the packages' installed layouts.

Each adapter takes the folder the package installs (the default) and returns `SpeechItem`s; a root
that does not look like the package raises `SourceLayoutError` naming what is missing. Only
headers are read (durations), never whole files, so listing every source takes a second.

What is left out, and why (read from the files on disk, see the adapters):
- anything shorter than `MIN_DURATION_S` (Asterisk's tones and shortest single words);
- Asterisk's `silence/` folder, its tones and sound effects (transcript in brackets: `[beep]`,
  `<beep ascending>`, `[sound of monkeys screaming]`), and byte-identical copies of a prompt;
- codec2's decoded codec outputs, its concatenated `all.wav` and its off-air modem recordings;
- ALSA's `Noise.wav`;
- beyond `KDE_PER_VOICE` recordings of one KDE voice (evenly spaced in name order), so that the
  Malayalam syllables (521 files) do not outweigh every other volunteer.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import logging
import re
import shutil
import struct
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MIN_DURATION_S = 0.6

FESTVOX_RU_ROOT = Path("/usr/share/festival/voices/russian/msu_ru_nsh_clunits")
ASTERISK_ROOT = Path("/usr/share/asterisk/sounds")
ASTERISK_TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
CODEC2_ROOT = Path("/usr/share/codec2/wav")
POCKETSPHINX_ROOT = Path("/usr/share/pocketsphinx/test/data")
ALSA_ROOT = Path("/usr/share/sounds/alsa")
KLETTRES_ROOT = Path("/usr/share/klettres")
KTUBERLING_ROOT = Path("/usr/share/ktuberling/sounds")
KDE_PER_VOICE = 60


class SourceLayoutError(ValueError):
    """The root does not look like the package's installed layout."""


@dataclass(frozen=True)
class SpeechItem:
    """One real recording: where it is, who says what in which language, and where it came from."""

    path: Path
    speaker: str
    language: str
    text: str | None
    package: str
    package_version: str
    licence: str
    source: str


@functools.cache
def package_version(package: str) -> str:
    """The installed Debian package's version (`dpkg-query`), or "unknown"."""
    dpkg = shutil.which("dpkg-query")
    if dpkg is None:
        return "unknown"
    try:
        done = subprocess.run(
            [dpkg, "-W", "-f", "${Version}", package], check=False, capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"


# ---------------------------------------------------------------------------------------------
# WAV headers


@dataclass(frozen=True)
class WavInfo:
    rate: int
    channels: int
    format_tag: int  # 1 PCM, 3 float, 6 A-law, 7 u-law, 0xFFFE extensible
    bits: int
    frames: int

    @property
    def duration_s(self) -> float:
        return self.frames / self.rate if self.rate else 0.0


def wav_info(path: Path) -> WavInfo:
    """Read a RIFF/WAVE header (any encoding); raises ValueError if it is not one."""
    size = path.stat().st_size
    with path.open("rb") as f:
        riff = f.read(12)
        if len(riff) < 12 or riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
            raise ValueError(f"{path} is not a RIFF/WAVE file")
        fmt: tuple[int, int, int, int, int] | None = None
        while True:
            header = f.read(8)
            if len(header) < 8:
                raise ValueError(f"{path}: no data chunk")
            chunk, length = header[:4], struct.unpack("<I", header[4:])[0]
            if chunk == b"fmt ":
                tag, channels, rate, _, block_align, bits = struct.unpack("<HHIIHH", f.read(16))
                fmt = (tag, channels, rate, block_align, bits)
                f.seek(length - 16 + (length & 1), 1)
            elif chunk == b"data":
                if fmt is None:
                    raise ValueError(f"{path}: data chunk before fmt chunk")
                tag, channels, rate, block_align, bits = fmt
                length = min(length, size - f.tell())  # streamed headers say 0xFFFFFFFF
                return WavInfo(rate, channels, tag, bits, length // max(block_align, 1))
            else:
                f.seek(length + (length & 1), 1)


def _long_enough(path: Path) -> bool:
    try:
        return wav_info(path).duration_s >= MIN_DURATION_S
    except (OSError, ValueError, struct.error) as exc:
        log.warning("%s: unreadable WAV header (%s); left out", path, exc)
        return False


def _require(source: str, *paths: Path, layout: str) -> None:
    for path in paths:
        if not path.exists():
            raise SourceLayoutError(f"{source}: {path} is missing\nexpected layout:\n{layout}")


def _wavs(folder: Path) -> Iterator[Path]:
    yield from sorted(p for p in folder.rglob("*") if p.suffix.lower() == ".wav" and p.is_file())


# ---------------------------------------------------------------------------------------------
# festvox-ru: the speaker the msu_ru_nsh_clunits unit-selection voice was built from

FESTVOX_RU_LAYOUT = """\
  wav/<id>.wav           16 kHz recordings
  etc/txt.done.data      ( <id> "sentence" ) per line"""
_PROMPT_LINE = re.compile(r'^\(\s*(\S+)\s+"(.*)"\s*\)\s*$')


def read_festival_prompts(path: Path) -> dict[str, str]:
    """`( id "text" )` lines of a festvox `txt.done.data` as {id: text}."""
    prompts: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _PROMPT_LINE.match(line.strip())
        if match:
            prompts[match.group(1)] = match.group(2).strip()
    return prompts


def festvox_ru(root: Path = FESTVOX_RU_ROOT) -> list[SpeechItem]:
    """The festvox-ru database: one male speaker, 620 read sentences with transcripts."""
    root = Path(root)
    prompts_file = root / "etc" / "txt.done.data"
    _require("festvox-ru", root / "wav", prompts_file, layout=FESTVOX_RU_LAYOUT)
    prompts = read_festival_prompts(prompts_file)
    version = package_version("festvox-ru")
    return [
        SpeechItem(wav, "msu_ru_nsh", "ru", prompts.get(wav.stem), "festvox-ru", version, "BSD-like", "festvox-ru")
        for wav in _wavs(root / "wav")
        if _long_enough(wav)
    ]


# ---------------------------------------------------------------------------------------------
# Asterisk prompts

ASTERISK_LAYOUT = """\
  en_US_f_Allison/**/*.wav   asterisk-core-sounds-en-wav
  es_MX_f_Allison/**/*.wav   asterisk-core-sounds-es-wav
  it_IT_m_Carlo/**/*.wav     asterisk-core-sounds-it-wav
  it_IT_f_Menardi/**/*.wav   asterisk-prompt-it-menardi-wav
  fr_CA_f_June/**/*.wav      asterisk-core-sounds-fr-wav
  ru_RU_f_IvrvoiceRU/**/*.wav  asterisk-core-sounds-ru-wav
  (at least one of them; transcripts: core-sounds-en.txt.gz, `name: text` lines)"""

# voice folder -> (speaker, language, package). Allison recorded both the English and the Spanish set.
ASTERISK_VOICES: dict[str, tuple[str, str, str]] = {
    "en_US_f_Allison": ("allison", "en", "asterisk-core-sounds-en-wav"),
    "es_MX_f_Allison": ("allison", "es", "asterisk-core-sounds-es-wav"),
    "it_IT_m_Carlo": ("carlo", "it", "asterisk-core-sounds-it-wav"),
    "it_IT_f_Menardi": ("menardi", "it", "asterisk-prompt-it-menardi-wav"),
    # Two more speakers (not in ../shared/DATA.md; same Debian source, CC-BY-SA-3.0): Canadian French, Russian.
    "fr_CA_f_June": ("june", "fr", "asterisk-core-sounds-fr-wav"),
    "ru_RU_f_IvrvoiceRU": ("ivrvoice_ru", "ru", "asterisk-core-sounds-ru-wav"),
}
# Tones and effects, also when no transcript is installed (the transcript marks them in brackets).
ASTERISK_NON_SPEECH = frozenset(
    {"ascending-2tone", "descending-2tone", "beep", "beeperr", "confbridge-join", "confbridge-leave", "tt-monkeys"}
)
_BRACKETED = re.compile(r"\[[^\]]*\]|<[^>]*>|\([^)]*\)")


def clean_transcript(text: str) -> str:
    """A transcript without its bracketed notes (`at [@]` -> `at`); empty when it names no speech."""
    return " ".join(_BRACKETED.sub(" ", text).split())


def read_asterisk_transcripts(path: Path) -> dict[str, str]:
    """`name: text` lines (gzip or plain) as {name: raw text}; `;` lines are comments."""
    opener = gzip.open if path.suffix == ".gz" else open
    transcripts: dict[str, str] = {}
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(";") or ": " not in line:
                continue
            name, text = line.split(": ", 1)
            transcripts[name.strip()] = text.strip()
    return transcripts


def _asterisk_voice(folder: Path, transcripts: dict[str, str] | None, non_speech: set[str]) -> list[SpeechItem]:
    speaker, language, package = ASTERISK_VOICES[folder.name]
    version = package_version(package)
    items: list[SpeechItem] = []
    seen: set[str] = set()
    for wav in _wavs(folder):
        name = wav.relative_to(folder).with_suffix("").as_posix()
        if name.split("/")[0] == "silence" or name in non_speech or not _long_enough(wav):
            continue
        digest = hashlib.sha1(wav.read_bytes()).hexdigest()
        if digest in seen:  # e.g. Menardi's queue-thankyou is auth-thankyou
            continue
        seen.add(digest)
        text = None
        if language == "en" and transcripts is not None and name in transcripts:
            text = clean_transcript(transcripts[name]) or None
        items.append(SpeechItem(wav, speaker, language, text, package, version, "CC-BY-SA-3.0", "asterisk"))
    return items


def asterisk(root: Path = ASTERISK_ROOT, transcripts: Path | None = ASTERISK_TRANSCRIPTS) -> list[SpeechItem]:
    """Asterisk's IVR prompts: Allison (en, es-MX), Carlo and Menardi (it); English transcripts.

    Digits, letters and phonetic words are kept when they last >= `MIN_DURATION_S`: they are real
    single-word speech, and the English TTS texts are drawn from the same transcripts, so short
    words exist on both sides (on disk most English ones last 0.6-1.2 s, a third of Carlo's are shorter).
    """
    root = Path(root)
    _require("asterisk", root, layout=ASTERISK_LAYOUT)
    folders = [root / name for name in ASTERISK_VOICES if (root / name).is_dir()]
    if not folders:
        raise SourceLayoutError(f"asterisk: none of {', '.join(ASTERISK_VOICES)} in {root}\n{ASTERISK_LAYOUT}")
    texts = read_asterisk_transcripts(transcripts) if transcripts is not None and transcripts.is_file() else None
    if texts is None:
        log.warning("asterisk: no transcripts at %s; English prompts get no text", transcripts)
    non_speech = set(ASTERISK_NON_SPEECH)
    non_speech.update(name for name, text in (texts or {}).items() if not clean_transcript(text))
    return [item for folder in folders for item in _asterisk_voice(folder, texts, non_speech)]


# ---------------------------------------------------------------------------------------------
# codec2-examples

CODEC2_LAYOUT = "  <name>.wav   8 kHz recordings (and decoded codec outputs, left out)"
# What is not an unprocessed recording of speech (codec2's own scripts and tests say what each file is).
CODEC2_EXCLUDED: dict[str, str] = {
    "f2400": "forig decoded by a 2400 bit/s codec",
    "m2400": "morig decoded by a 2400 bit/s codec",
    "all": "the other samples concatenated (script/separate_all.sh cuts it into hts1, hts2, morig, ...)",
    "david4": "off-air FreeDV 2020 OFDM modem signal, not speech",
    "vk2tpm_004": "off-air FreeDV 700D OFDM modem signal, not speech",
}
# Decoded outputs named after a codec mode: f2400, m2400, hts1a_1300, hts1a_700c, ...
_CODEC_OUTPUT = re.compile(r"(^[fm]|_)(450|700[a-e]?|1200|1300|1400|1600|2400|3200)(pwb)?$", re.IGNORECASE)


def codec2_examples(root: Path = CODEC2_ROOT) -> list[SpeechItem]:
    """codec2's unprocessed test recordings (several speakers, mostly 8 kHz); speaker = file stem."""
    root = Path(root)
    _require("codec2", root, layout=CODEC2_LAYOUT)
    wavs = sorted(root.glob("*.wav"))
    if not wavs:
        raise SourceLayoutError(f"codec2: no .wav files in {root}\nexpected layout:\n{CODEC2_LAYOUT}")
    version = package_version("codec2-examples")
    return [
        SpeechItem(wav, wav.stem, "en", None, "codec2-examples", version, "LGPL-2.1", "codec2")
        for wav in wavs
        if wav.stem not in CODEC2_EXCLUDED and not _CODEC_OUTPUT.search(wav.stem) and _long_enough(wav)
    ]


# ---------------------------------------------------------------------------------------------
# pocketsphinx-testdata

POCKETSPHINX_LAYOUT = """\
  <set>/<id>.wav                              16 kHz test utterances (librivox/, cards/)
  <set>/transcription or <set>/*.transcription  `<s> text </s> (<id>)` lines"""
_SPHINX_LINE = re.compile(r"^(?:<s>)?\s*(.*?)\s*(?:</s>)?\s*\(([^()]+)\)\s*$")


def read_sphinx_transcription(path: Path) -> dict[str, str]:
    """`<s> text </s> (fileid)` lines as {file stem: text}."""
    texts: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        match = _SPHINX_LINE.match(line.strip())
        if match and match.group(1):
            texts[Path(match.group(2).strip()).name] = " ".join(match.group(1).split())
    return texts


def pocketsphinx_testdata(root: Path = POCKETSPHINX_ROOT) -> list[SpeechItem]:
    """pocketsphinx's test wavs with their transcripts; speaker = the set's folder (librivox reader, cards)."""
    root = Path(root)
    _require("pocketsphinx", root, layout=POCKETSPHINX_LAYOUT)
    wavs = list(_wavs(root))
    if not wavs:
        raise SourceLayoutError(f"pocketsphinx: no .wav files under {root}\nexpected layout:\n{POCKETSPHINX_LAYOUT}")
    texts: dict[Path, dict[str, str]] = {}
    for folder in sorted({wav.parent for wav in wavs}):
        merged: dict[str, str] = {}
        for listing in sorted(folder.glob("*transcription")):
            merged.update(read_sphinx_transcription(listing))
        texts[folder] = merged
    version = package_version("pocketsphinx-testdata")
    items = []
    for wav in wavs:
        parts = wav.relative_to(root).parts
        speaker = parts[0] if len(parts) > 1 else "pocketsphinx"
        if _long_enough(wav):
            text = texts[wav.parent].get(wav.stem)
            items.append(SpeechItem(wav, speaker, "en", text, "pocketsphinx-testdata", version, "BSD-2", "pocketsphinx"))
    return items


# ---------------------------------------------------------------------------------------------
# alsa-utils

ALSA_LAYOUT = "  <Channel_Name>.wav   spoken channel names, 48 kHz (Noise.wav is left out)"


def alsa_sounds(root: Path = ALSA_ROOT) -> list[SpeechItem]:
    """speaker-test's spoken channel names ("Front Left", ...): one voice, 48 kHz."""
    root = Path(root)
    _require("alsa", root, layout=ALSA_LAYOUT)
    wavs = [wav for wav in sorted(root.glob("*.wav")) if wav.stem.lower() != "noise"]
    if not wavs:
        raise SourceLayoutError(f"alsa: no spoken .wav files in {root}\nexpected layout:\n{ALSA_LAYOUT}")
    version = package_version("alsa-utils")
    return [
        SpeechItem(wav, "alsa", "en", wav.stem.replace("_", " "), "alsa-utils", version, "GPL-2", "alsa")
        for wav in wavs
        if _long_enough(wav)
    ]


# ---------------------------------------------------------------------------------------------
# KDE's educational games: volunteers' own recordings, one voice per language, home microphones

KLETTRES_LAYOUT = "  <lang>/alpha/*.ogg, <lang>/syllab/*.ogg   letters and syllables spoken (klettres-data)"
KTUBERLING_LAYOUT = "  <lang>/*.ogg   names of the toy's parts spoken (ktuberling-data)"


def _audio_duration_s(path: Path) -> float:
    """Duration from the container (PyAV), for files that are not WAV."""
    import av

    with av.open(str(path), metadata_errors="replace") as container:
        stream = container.streams.audio[0]
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        return float(container.duration or 0) / 1e6


def _kde_voices(
    source: str, package: str, root: Path, pattern: str, layout: str, per_voice: int,
) -> list[SpeechItem]:
    """Each language folder of `root` is one volunteer's voice (speaker `<source>_<lang>`); at most
    `per_voice` files of it, evenly spaced in name order, each at least `MIN_DURATION_S` long."""
    root = Path(root)
    _require(source, root, layout=layout)
    version = package_version(package)
    items = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = []
        for path in sorted(folder.glob(pattern)):
            try:
                if _audio_duration_s(path) >= MIN_DURATION_S:
                    files.append(path)
            except Exception as exc:  # noqa: BLE001 - PyAV raises its own error family for unreadable files
                log.warning("%s: unreadable (%s); left out", path, exc)
        step = max(1.0, len(files) / per_voice)
        kept = [files[int(i * step)] for i in range(min(per_voice, len(files)))]
        language = folder.name.split("_")[0].split("@")[0]
        items += [SpeechItem(path, f"{source}_{folder.name}", language, None, package, version, "GPL-2+", source)
                  for path in kept]
    if not items:
        raise SourceLayoutError(f"{source}: no spoken .ogg files under {root}\nexpected layout:\n{layout}")
    return items


def klettres(root: Path = KLETTRES_ROOT, per_voice: int = KDE_PER_VOICE) -> list[SpeechItem]:
    """KLettres: letters and syllables in about 20 languages, each recorded by a volunteer."""
    return _kde_voices("klettres", "klettres-data", root, "*/*.ogg", KLETTRES_LAYOUT, per_voice)


def ktuberling(root: Path = KTUBERLING_ROOT, per_voice: int = KDE_PER_VOICE) -> list[SpeechItem]:
    """KTuberling: single words (the potato man's parts) in about 25 languages, each recorded by a volunteer."""
    return _kde_voices("ktuberling", "ktuberling-data", root, "*.ogg", KTUBERLING_LAYOUT, per_voice)


SpeechSource = Callable[[], list[SpeechItem]]
BONA_FIDE: dict[str, SpeechSource] = {
    "festvox-ru": festvox_ru,
    "asterisk": asterisk,
    "codec2": codec2_examples,
    "pocketsphinx": pocketsphinx_testdata,
    "alsa": alsa_sounds,
    # Not in ../shared/DATA.md: KDE's klettres-data and ktuberling-data (GPL-2+), many volunteers' voices.
    "klettres": klettres,
    "ktuberling": ktuberling,
}
