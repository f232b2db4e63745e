"""Speech-like audio synthesized in code, and the audio manipulations of the synthetic benchmark.

No recording is needed: a `Voice` (pitch, vocal-tract length, speaking rate, breathiness) and a
seed give an utterance with speech's structure — voiced syllables with gliding pitch and vowel
formants, fricative onsets, words and phrases separated by pauses, breaths between phrases — so
envelope, pitch and spectral features behave like speech and a mouth can be animated from it.
It is not intelligible, and need not be: detectors learn manipulation traces, not words.

Manipulations (each returns a new array of the same length, so durations never change):
`vocoder_resynthesis` (Griffin-Lim from a mel-smoothed magnitude), `splice_segments` (hard-cut
segments of another take, pitch-shifted by resampling) and `shift_audio` (the AV offset).
Everything is float32 mono at `SAMPLE_RATE`; only numpy, so worker processes start fast.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

SAMPLE_RATE = 16_000

# F1-F3 (Hz) of /a/, /i/, /e/, /o/, /u/ for an adult vocal tract; `Voice.formant_scale` scales them.
_VOWEL_FORMANTS = np.array(
    [[730, 1090, 2440], [270, 2290, 3010], [530, 1840, 2480], [570, 840, 2410], [300, 870, 2240]], float
)
_N_FFT = 512  # STFT window for the vocoder: 32 ms at 16 kHz
_HOP = 128  # 8 ms
_N_MELS = 64

# muxer and encoder for each lossless audio-file format the benchmark writes.
AUDIO_FORMATS = {"wav": ("wav", "pcm_s16le"), "flac": ("flac", "flac")}


@dataclass(frozen=True)
class Voice:
    """A synthetic speaker: what makes two utterances of one benchmark `group` sound like one person."""

    f0_hz: float  # median pitch
    f0_spread: float  # intonation range as a fraction of f0
    formant_scale: float  # vocal-tract length: > 1 is a shorter tract, higher formants
    rate: float  # speaking-rate factor (1 = about 4 syllables per second)
    breathiness: float  # aspiration noise relative to the voiced source

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Voice:
        """A random adult voice: low (85-150 Hz) or high (160-260 Hz) register, tract and rate to match."""
        high = bool(rng.random() < 0.5)
        return cls(
            f0_hz=float(rng.uniform(160, 260) if high else rng.uniform(85, 150)),
            f0_spread=float(rng.uniform(0.08, 0.25)),
            formant_scale=float(rng.uniform(1.05, 1.2) if high else rng.uniform(0.88, 1.02)),
            rate=float(rng.uniform(0.8, 1.25)),
            breathiness=float(rng.uniform(0.02, 0.25)),
        )


def synth_speech(seconds: float, voice: Voice, seed: int, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 `(N,)` utterance of `seconds` in `voice`, peak 0.8; the same seed gives the same samples.

    Phrases of 2-5 words, words of 1-3 syllables. A syllable is an optional fricative or plosive
    onset (shaped noise) and a vowel: a skewed-sawtooth glottal source whose pitch declines over
    the phrase and glides within the syllable, with jitter and aspiration noise, filtered by three
    formants in the frequency domain. Pauses of 80-250 ms separate words; a breath (band-passed
    noise) fills the longer pause between phrases. A faint noise floor stands in for the room.
    """
    rng = np.random.default_rng(seed)
    n_total = int(round(seconds * sr))
    out = np.zeros(n_total + sr, np.float64)  # one second of slack, cut at the end
    t = int(rng.uniform(0.05, 0.3) * sr)
    while t < n_total:
        n_words = int(rng.integers(2, 6))
        for word in range(n_words):
            for _ in range(int(rng.integers(1, 4))):
                if t < n_total:  # the slack after n_total holds one more syllable, never two
                    t = _add_syllable(out, t, voice, 1.0 - 0.15 * word / n_words, rng, sr)
            t += int(rng.uniform(0.08, 0.25) / voice.rate * sr)
        if t >= n_total:
            break
        breath = int(rng.uniform(0.25, 0.5) * sr)
        out[t : t + breath] += _band_noise(breath, 400, 2500, rng, sr) * 0.04 * np.sin(np.linspace(0, np.pi, breath))
        t += breath + int(rng.uniform(0.05, 0.2) * sr)
    out = out[:n_total] + 0.002 * rng.standard_normal(n_total)
    return (0.8 * out / (np.abs(out).max() + 1e-9)).astype(np.float32)


def _add_syllable(out: np.ndarray, t: int, voice: Voice, declination: float, rng: np.random.Generator, sr: int) -> int:
    """Write one syllable into `out` at sample `t`; return the sample after it."""
    if rng.random() < 0.55:  # consonant onset: fricative hiss or a short plosive burst
        n_c = int((rng.uniform(0.04, 0.09) if rng.random() < 0.6 else rng.uniform(0.01, 0.025)) / voice.rate * sr)
        centre = rng.uniform(2500, 5500) * voice.formant_scale
        burst = _band_noise(n_c, centre - 1200, min(centre + 1200, sr / 2 - 100), rng, sr)
        out[t : t + n_c] += burst * rng.uniform(0.1, 0.3) * np.hanning(n_c)
        t += n_c
    n = int(rng.uniform(0.11, 0.24) / voice.rate * sr)
    accent = 1 + voice.f0_spread * rng.uniform(-1, 1)
    glide = 1 + 0.5 * voice.f0_spread * np.linspace(-1, 1, n) * rng.choice([-1, 1])
    f0 = voice.f0_hz * declination * accent * glide * (1 + 0.01 * rng.standard_normal(n))  # jitter
    phase = np.cumsum(f0 / sr)
    source = (phase % 1.0) ** 3 - 0.25  # skewed sawtooth ~ glottal pulses
    source = source + voice.breathiness * rng.standard_normal(n) * (phase % 1.0 < 0.5)  # aspiration
    spectrum = np.fft.rfft(source)
    freqs = np.fft.rfftfreq(n, 1 / sr)
    formants = _VOWEL_FORMANTS[rng.integers(len(_VOWEL_FORMANTS))] * voice.formant_scale
    gain = sum(np.exp(-0.5 * ((freqs - f) / (50 + 0.06 * f)) ** 2) / (1 + j) for j, f in enumerate(formants))
    voiced = np.fft.irfft(spectrum * (gain + 0.02), n)
    envelope = np.sin(np.linspace(0, np.pi, n)) ** 0.6
    out[t : t + n] += voiced / (np.abs(voiced).max() + 1e-9) * envelope * rng.uniform(0.55, 1.0)
    return t + n


def _band_noise(n: int, low_hz: float, high_hz: float, rng: np.random.Generator, sr: int) -> np.ndarray:
    """White noise `(n,)` band-passed to [low_hz, high_hz] in the frequency domain, unit peak."""
    if n <= 0:
        return np.zeros(0)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / sr)
    noise = np.fft.irfft(spectrum * ((freqs >= low_hz) & (freqs <= high_hz)), n)
    return noise / (np.abs(noise).max() + 1e-9)


def frame_envelope(audio: np.ndarray, n_frames: int, fps: float, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Loudness per video frame in [0, 1] `(n_frames,)`: RMS over each frame's audio window, peak-normalised."""
    hop = sr / fps
    bounds = np.round(np.arange(n_frames + 1) * hop).astype(int)
    padded = np.concatenate([audio.astype(np.float64), np.zeros(max(bounds[-1] - len(audio), 0))])
    energy = np.add.reduceat(padded[: bounds[-1]] ** 2, bounds[:-1]) / np.diff(bounds)  # (n_frames,)
    env = np.sqrt(energy)
    return env / (env.max() + 1e-9)


def mouth_opening(audio: np.ndarray, n_frames: int, fps: float, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Mouth opening in [0, 1] per video frame `(n_frames,)` that lip-syncs a face to `audio`.

    The envelope is compressed (power 0.7) so quiet syllables still open the mouth visibly.
    """
    return frame_envelope(audio, n_frames, fps, sr) ** 0.7


def _stft(x: np.ndarray) -> np.ndarray:
    """Complex STFT `(F, P)` with a periodic Hann window, centred frames (x padded by half a window)."""
    pad = _N_FFT // 2
    padded = np.pad(x.astype(np.float64), (pad, pad + _HOP))
    n_frames = 1 + (len(padded) - _N_FFT) // _HOP
    idx = np.arange(_N_FFT)[None, :] + _HOP * np.arange(n_frames)[:, None]  # (P, N_FFT)
    return np.fft.rfft(padded[idx] * _hann(), axis=1).T


def _istft(spec: np.ndarray, length: int) -> np.ndarray:
    """Least-squares inverse of `_stft` (weighted overlap-add) cut to `length` samples `(length,)`."""
    frames = np.fft.irfft(spec.T, _N_FFT, axis=1) * _hann()  # (P, N_FFT)
    n_frames, parts = len(frames), _N_FFT // _HOP
    blocks = frames.reshape(n_frames, parts, _HOP)  # (P, parts, HOP): a frame covers `parts` hops
    signal = np.zeros((n_frames + parts - 1, _HOP))
    for j in range(parts):
        signal[j : j + n_frames] += blocks[:, j]
    weight = np.zeros((n_frames + parts - 1, _HOP))
    for j, window_part in enumerate((_hann() ** 2).reshape(parts, _HOP)):
        weight[j : j + n_frames] += window_part
    pad = _N_FFT // 2
    return (signal.reshape(-1) / np.maximum(weight.reshape(-1), 1e-8))[pad : pad + length]


def _hann() -> np.ndarray:
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(_N_FFT) / _N_FFT)  # (N_FFT,) periodic


def _mel_filterbank(sr: int) -> np.ndarray:
    """Triangular HTK-mel filters `(N_MELS, F)`, each normalised to unit area."""
    def to_mel(f: np.ndarray) -> np.ndarray:
        return 2595 * np.log10(1 + f / 700)

    freqs = np.fft.rfftfreq(_N_FFT, 1 / sr)
    edges = 700 * (10 ** (np.linspace(to_mel(np.array(40.0)), to_mel(np.array(sr / 2)), _N_MELS + 2) / 2595) - 1)
    low, centre, high = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    bank = np.clip(np.minimum((freqs - low) / (centre - low), (high - freqs) / (high - centre)), 0, None)
    return bank / (bank.sum(axis=1, keepdims=True) + 1e-9)


def vocoder_resynthesis(
    audio: np.ndarray, rng: np.random.Generator, n_iter: int = 32, sr: int = SAMPLE_RATE
) -> np.ndarray:
    """Resynthesise `audio` `(N,)` the way a neural-vocoder pipeline would lose it: same length and timing.

    The STFT magnitude is squeezed through a 64-band mel spectrogram (which discards the fine
    harmonic structure between bands) and back, then Griffin-Lim with momentum (Perraudin et
    al. 2013) reconstructs a waveform from a random initial phase. The result keeps the words'
    timing and envelope but carries phase incoherence and smeared harmonics, the traces
    spoof detectors look for. Loudness is matched to the input's RMS.
    """
    spec = _stft(audio)  # (F, P)
    bank = _mel_filterbank(sr)  # (M, F)
    mel = bank @ np.abs(spec)  # (M, P)
    magnitude = np.clip(np.linalg.pinv(bank) @ mel, 0, None)  # (F, P)
    angles = np.exp(2j * np.pi * rng.random(magnitude.shape))
    previous = np.zeros_like(angles)
    momentum = 0.99
    for _ in range(n_iter):
        rebuilt = _stft(_istft(magnitude * angles, len(audio)))
        angles = rebuilt - previous * (momentum / (1 + momentum))
        angles /= np.abs(angles) + 1e-16
        previous = rebuilt
    out = _istft(magnitude * angles, len(audio))
    out *= np.sqrt(np.mean(audio.astype(np.float64) ** 2) / (np.mean(out**2) + 1e-12))
    return np.clip(out, -1, 1).astype(np.float32)


@dataclass(frozen=True)
class SpliceSegment:
    """One replaced stretch: [start_s, end_s) now holds another take pitch-shifted by `pitch_ratio`."""

    start_s: float
    end_s: float
    pitch_ratio: float

    def as_meta(self) -> list[float]:
        return [round(self.start_s, 3), round(self.end_s, 3), round(self.pitch_ratio, 3)]


def splice_segments(
    audio: np.ndarray, donor: np.ndarray, rng: np.random.Generator, sr: int = SAMPLE_RATE
) -> tuple[np.ndarray, list[SpliceSegment]]:
    """Replace 1-3 stretches of `audio` `(N,)` with pitch-shifted pieces of `donor` `(N,)`, joined by hard cuts.

    `donor` is another take of the same speaker, so only the edits give the fake away: each piece
    (0.3-0.9 s) is read `ratio` times faster by linear resampling, which moves pitch and formants
    by `ratio` (0.78-0.9 or 1.12-1.3, a few semitones), is rescaled to the local loudness, and is
    cut in without a crossfade, leaving a discontinuity at both ends and a jump in noise floor.
    """
    out = audio.astype(np.float32).copy()
    n = len(out)
    segments: list[SpliceSegment] = []
    for _ in range(int(rng.integers(1, 4))):
        length = int(rng.uniform(0.3, 0.9) * sr)
        if length >= n:
            break
        start = int(rng.integers(0, n - length))
        if any(start < s.end_s * sr and start + length > s.start_s * sr for s in segments):
            continue
        ratio = float(rng.uniform(0.78, 0.9) if rng.random() < 0.5 else rng.uniform(1.12, 1.3))
        source_start = int(rng.integers(0, max(n - int(length * ratio) - 1, 1)))
        positions = source_start + np.arange(length) * ratio  # (length,) fractional donor samples
        piece = np.interp(positions, np.arange(n), donor).astype(np.float32)
        local = np.sqrt(np.mean(out[start : start + length] ** 2)) + 1e-4
        piece *= local / (np.sqrt(np.mean(piece**2)) + 1e-4)
        piece += np.float32(0.01) * rng.standard_normal(length).astype(np.float32)  # another room
        out[start : start + length] = piece
        segments.append(SpliceSegment(start / sr, (start + length) / sr, ratio))
    return np.clip(out, -1, 1), sorted(segments, key=lambda s: s.start_s)


def shift_audio(audio: np.ndarray, offset_ms: float, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """`audio` `(N,)` moved against the picture by `offset_ms`, same length: positive = audio leads (heard early).

    A lead drops the first samples and pads the end; a lag pads the start. Padding is a faint
    noise floor rather than digital silence, so the cut is not trivially visible.
    """
    shift = int(round(abs(offset_ms) * sr / 1000))
    n = len(audio)
    shift = min(shift, n)
    pad = (0.002 * rng.standard_normal(shift)).astype(np.float32)
    if offset_ms > 0:
        return np.concatenate([audio[shift:], pad]).astype(np.float32)
    return np.concatenate([pad, audio[: n - shift]]).astype(np.float32)


def encode_audio_file(samples: np.ndarray, fmt: str, sr: int = SAMPLE_RATE) -> bytes:
    """Mono float32 `(N,)` as a lossless audio file (`AUDIO_FORMATS`: wav or flac), in memory."""
    if fmt not in AUDIO_FORMATS:
        raise ValueError(f"unknown audio format {fmt!r}; known: {sorted(AUDIO_FORMATS)}")
    container, codec = AUDIO_FORMATS[fmt]
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=sr)
        stream.layout = "mono"
        for packet in encode_audio_packets(stream, samples, sr):
            out.mux(packet)
    return buf.getvalue()


def encode_audio_packets(stream: av.audio.stream.AudioStream, samples: np.ndarray, sr: int) -> list[av.Packet]:
    """Encode all of mono `samples` `(N,)` into `stream`, flushing it; PyAV re-frames to the codec's frame size."""
    planar = np.ascontiguousarray(samples.astype(np.float32)[None, :])  # (1, N)
    packets: list[av.Packet] = []
    chunk = 4096
    for start in range(0, planar.shape[1], chunk):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planar[:, start : start + chunk]), format="fltp",
                                           layout="mono")
        frame.sample_rate = sr
        frame.pts = start
        frame.time_base = Fraction(1, sr)
        packets.extend(stream.encode(frame))
    packets.extend(stream.encode())
    return packets
