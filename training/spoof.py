"""Train the band-limited spoof net (models.spoof) on a real speech corpus and measure how it generalizes.

    spectrashield train-spoof --manifest build/speech/manifest.jsonl --base v1 --version v2 --out DIR
    spectrashield spoof-folds --manifest build/speech/manifest.jsonl --out DIR   # LOEO / LOSO / shortcut

The corpus (training.speech_corpus) holds real speakers (bona fide) and real TTS engines and
vocoders (spoofed). Every file is decoded the way the service decodes an upload (media.decode,
16 kHz mono), so training sees exactly what serving sees. The net then band-limits, trims and
normalizes it itself (models.spoof), so the cheap differences between sources (sample rate,
silence, loudness) cannot be learned; `shortcut_baseline` checks what is left of them.

The new net becomes the spoof head of an av_alignment bundle whose other weights (the
Wav2Vec2 encoder, lip sync, offset) are copied unchanged from the base version.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from scipy.signal import fftconvolve
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from models.bundle import CHANNEL_OOD_FILE, OOD_FILE, attach_ood, bundle_dir, load_bundle, save_bundle, weights_root
from models.channel import channel_profile
from models.spoof import SpectralSpoofConfig, SpectralSpoofNet
from training.manifest import ManifestEntry, read_manifest

logger = logging.getLogger(__name__)
RATE = 16_000
DEFAULT_SPOOF = SpectralSpoofConfig()


@dataclass(frozen=True)
class SpoofHParams:
    epochs: int = 12
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-3
    crop_s: float = 3.0  # training crop; evaluation reads the whole file (up to max_eval_s)
    max_eval_s: float = 30.0  # the served graph's max_audio_s
    seed: int = 0
    threads: int = 2
    max_steps_per_epoch: int | None = None  # folds: a cheaper schedule (each fold is a full retraining)
    # Channel transfer (`ChannelBank`): the chance a spoofed / a bona fide training crop is given the recording
    # chain (long-term spectrum and noise floor) of a random bona fide training file. 0 and 0: off (v2, v5).
    transfer_spoof: float = 0.0
    transfer_bona_fide: float = 0.0
    # The chance a training crop goes through `telephone` (v5 and before: 0.2, G.711 mu-law only).
    telephone: float = 0.3


@dataclass
class Corpus:
    entries: list[ManifestEntry]
    audio: list[np.ndarray]  # 16 kHz float32, as media.decode hands it to the AV stage

    def labels(self, idx: Sequence[int]) -> np.ndarray:
        return np.array([self.entries[i].label for i in idx], int)

    def where(self, split: str | None = None, exclude: Any = None) -> list[int]:
        return [
            i for i, e in enumerate(self.entries)
            if (split is None or e.split == split) and not (exclude and exclude(e))
        ]


def decode_audio(path: Path | bytes) -> np.ndarray:
    """The served decode of an audio upload (a file, or its bytes): PyAV -> 16 kHz mono float32."""
    from media import DecodeConfig, decode_media

    clip = decode_media(path if isinstance(path, bytes) else path.read_bytes(), DecodeConfig(analyze_faces=False))
    return np.asarray(clip.audio, np.float32)


def held_out_speakers(entries: Sequence[ManifestEntry], sources: Sequence[str]) -> set[str]:
    """The speakers of these bona fide sources (e.g. kept for the independent benchmark's real voices)."""
    return {_speaker(e) for e in entries if e.label == 0 and e.source in set(sources)}


def load_corpus(manifest: Path, cache: Path | None = None, hold_out_sources: Sequence[str] = ()) -> Corpus:
    """Manifest rows of kind audio, decoded once; the decoded audio is cached beside the manifest.

    `hold_out_sources`: their speakers' recordings, and vocoder copies of them, are left out entirely."""
    entries = [e for e in read_manifest(manifest) if e.kind == "audio"]
    held = held_out_speakers(entries, hold_out_sources)
    entries = [e for e in entries if not (_speaker(e) in held and (e.label == 0 or e.families == ["vocoder"]))]
    cache = cache or manifest.with_name("decoded-16k.npz" if not held else "decoded-16k-heldout.npz")
    keys = [e.path for e in entries]
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            if list(z["keys"]) == keys:
                offsets = z["offsets"]
                flat = z["audio"].astype(np.float32)
                return Corpus(entries, [flat[offsets[i]: offsets[i + 1]] for i in range(len(keys))])
    audio = [decode_audio(manifest.parent / e.path) for e in tqdm(entries, desc="decode", unit="file")]
    offsets = np.cumsum([0] + [a.size for a in audio])
    np.savez(cache, keys=np.array(keys), offsets=offsets, audio=np.concatenate(audio).astype(np.float16))
    return Corpus(entries, audio)


# ---------------------------------------------------------------------------------------------- augmentation
def augment(x: np.ndarray, rng: np.random.Generator, telephone_chance: float = SpoofHParams.telephone) -> np.ndarray:
    """What real uploads do to speech, applied to both classes alike: level, noise, a room, a lossy
    codec, a phone call (`telephone`, with chance `telephone_chance`), and silence of any length around it."""
    x = x.astype(np.float32)
    if rng.random() < 0.5:  # another voice: tape-speed change (pitch and formants move together, no vocoder)
        factor = rng.uniform(0.85, 1.15)
        x = AF.resample(torch.from_numpy(x), RATE, round(RATE * factor / 50) * 50).numpy()
    if rng.random() < 0.5:  # another microphone / line: a smooth random EQ of +-6 dB over log frequency
        spec = np.fft.rfft(x)
        logf = np.log2(np.maximum(np.fft.rfftfreq(x.size, 1 / RATE), 50.0) / 50.0) / np.log2(RATE / 100)
        curve = sum(rng.uniform(-3, 3) * np.cos(np.pi * k * logf + rng.uniform(0, np.pi)) for k in range(1, 5))
        x = np.fft.irfft(spec * 10 ** (curve / 20), n=x.size).astype(np.float32)
    if rng.random() < 0.2:  # a room: exponentially decaying noise as the impulse response
        rt60 = rng.uniform(0.15, 0.6)
        n = int(rt60 * RATE)
        rir = rng.standard_normal(n).astype(np.float32) * np.exp(-6.9 * np.arange(n) / n).astype(np.float32)
        rir[0] = 1.0 / max(rng.uniform(0.3, 1.0), 1e-3)
        wet = fftconvolve(x, rir)[: x.size]
        x = wet / (np.abs(wet).max() + 1e-6) * (np.abs(x).max() + 1e-6)
    if rng.random() < 0.4:  # a lossy codec at a low bit rate, as uploads and calls carry speech
        x = codec_roundtrip(x, rng)
    if rng.random() < telephone_chance:  # a phone call: 8 kHz narrowband speech through a telephone codec
        x = telephone(x, rng)
    if rng.random() < 0.3:  # noise at 15-45 dB SNR
        power = float(np.mean(x**2)) + 1e-10
        snr = rng.uniform(15, 45)
        x = x + rng.standard_normal(x.size).astype(np.float32) * np.sqrt(power / 10 ** (snr / 10))
    if rng.random() < 0.5:  # silence (with a little noise) around the speech
        pad = [int(rng.uniform(0, 0.8) * RATE) for _ in range(2)]
        floor = rng.uniform(0, 1e-3)
        x = np.concatenate([
            rng.standard_normal(pad[0]).astype(np.float32) * floor, x,
            rng.standard_normal(pad[1]).astype(np.float32) * floor,
        ])
    gain = 10 ** (rng.uniform(-20, 6) / 20)
    return np.clip(x * gain, -1, 1).astype(np.float32)


class ChannelBank:
    """The recording chains of a set of bona fide files, to give other speech the same chains.

    A corpus's bona fide speech comes through a few studio chains and each spoof engine through its own,
    so the chain alone separates the classes (`shortcut_baseline`'s `channel_profile`). `transfer` moves
    a crop onto a random donor's chain: it equalizes the crop's smoothed long-term spectrum (louder half of
    its frames) to the donor's, gains limited to +-20 dB, and adds the donor's own noise floor (its quietest
    tenth of frames, tiled) at the donor's speech-to-noise ratio. Applied to spoofed and bona fide crops
    alike, the chain stops telling them apart; what synthesis leaves in the speech itself still does.
    """

    n_fft, hop, smooth = 512, 256, 9

    def __init__(self, audio: Sequence[np.ndarray]) -> None:
        self.audio = list(audio)
        self._chains: dict[int, tuple[np.ndarray, np.ndarray, float]] = {}

    def _stft(self, x: np.ndarray) -> torch.Tensor:
        return torch.stft(torch.from_numpy(np.ascontiguousarray(x, np.float32)), self.n_fft, self.hop,
                          window=torch.hann_window(self.n_fft), return_complex=True)

    def _ltas(self, spec: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Smoothed log power spectrum of the louder half of the frames, and each frame's energy."""
        power = spec.abs().pow(2).numpy()  # (F, T)
        energy = power.sum(axis=0) + 1e-12
        loud = power[:, energy >= np.median(energy)]
        log = np.log(loud.mean(axis=1) + 1e-12)
        kernel = np.ones(self.smooth) / self.smooth
        return np.convolve(np.pad(log, self.smooth // 2, mode="edge"), kernel, mode="valid"), energy

    def chain(self, i: int) -> tuple[np.ndarray, np.ndarray, float]:
        """(smoothed log spectrum, noise-floor samples, noise-to-speech RMS ratio) of donor `i`, cached."""
        if i not in self._chains:
            x = self.audio[i].astype(np.float32)
            if x.size < self.n_fft:
                x = np.pad(x, (0, self.n_fft - x.size))
            ltas, energy = self._ltas(self._stft(x))
            quiet = np.argsort(energy)[: max(1, energy.size // 10)]
            noise = np.concatenate([x[k * self.hop: k * self.hop + self.hop] for k in sorted(quiet)])
            loud = np.sqrt(np.mean(energy[energy >= np.median(energy)]))
            self._chains[i] = (ltas, noise, float(np.sqrt(np.mean(energy[quiet])) / (loud + 1e-12)))
        return self._chains[i]

    def transfer(self, x: np.ndarray, donor: int) -> np.ndarray:
        if x.size < self.n_fft:
            return x
        target, noise, ratio = self.chain(donor)
        spec = self._stft(x)
        own, _ = self._ltas(spec)
        gain = np.exp(np.clip((target - own) / 2, -np.log(10.0), np.log(10.0)))  # amplitude; +-20 dB
        y = torch.istft(spec * torch.from_numpy(gain.astype(np.float32))[:, None], self.n_fft, self.hop,
                        window=torch.hann_window(self.n_fft), length=x.size).numpy()
        if noise.size and ratio > 0:
            tiled = np.resize(noise, y.size)
            y = y + tiled / (np.sqrt(np.mean(tiled**2)) + 1e-12) * ratio * np.sqrt(np.mean(y**2))
        peak = np.abs(y).max()
        return (y / peak * min(peak, 1.0)).astype(np.float32) if peak > 0 else y.astype(np.float32)


_CODECS = (("mp3", "libmp3lame", (24_000, 64_000)), ("ogg", "libopus", (12_000, 32_000)), ("adts", "aac", (24_000, 64_000)))


def _through_codec(x: np.ndarray, rate: int, container: str, encoder: str, bit_rate: int, size: int) -> np.ndarray:
    """Mono `x` at `rate` encoded by PyAV (`encoder` in `container` at `bit_rate`), decoded back as the service
    decodes (16 kHz), padded or cut to `size` samples."""
    import io

    import av

    from training.synth_audio import encode_audio_packets

    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(encoder, rate=rate)
        stream.layout, stream.bit_rate = "mono", bit_rate
        for packet in encode_audio_packets(stream, x, rate):
            out.mux(packet)
    y = decode_audio(buf.getvalue())
    return np.pad(y, (0, max(0, size - y.size)))[:size].astype(np.float32)


def codec_roundtrip(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`x` encoded with MP3, Opus or AAC at a random low bit rate (PyAV) and decoded back as the service decodes, same length."""
    container, encoder, (low, high) = _CODECS[int(rng.integers(len(_CODECS)))]
    return _through_codec(x, RATE, container, encoder, int(rng.uniform(low, high)), x.size)


# Telephone codecs PyAV encodes, as (container, encoder, bit rates): G.711 mu-law and A-law, AMR-NB (mobile
# calls, its eight modes) and G.726 ADPCM. GSM 06.10, the other common one, has no encoder in PyAV's FFmpeg:
# it stays unseen in training, so that speech coded with it measures whether the net learnt "a phone codec"
# rather than these four.
_PHONE_CODECS = (
    ("wav", "pcm_mulaw", (64_000,)), ("wav", "pcm_alaw", (64_000,)),
    ("amr", "libopencore_amrnb", (4_750, 5_150, 5_900, 6_700, 7_400, 7_950, 10_200, 12_200)),
    ("wav", "adpcm_g726", (16_000, 24_000, 32_000, 40_000)),
)


def telephone(x: np.ndarray, rng: np.random.Generator, codec: int | None = None) -> np.ndarray:
    """`x` as a phone call carries it: down to 8 kHz, through a telephone codec (`_PHONE_CODECS[codec]`,
    random when None) at a random one of its bit rates, decoded back as the service decodes, same length."""
    container, encoder, rates = _PHONE_CODECS[int(rng.integers(len(_PHONE_CODECS))) if codec is None else codec]
    low = AF.resample(torch.from_numpy(np.clip(x, -1, 1).astype(np.float32)), RATE, 8000).numpy()
    return _through_codec(low, 8000, container, encoder, int(rates[int(rng.integers(len(rates)))]), x.size)


def crop(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    if x.size <= n:
        return x
    start = int(rng.integers(0, x.size - n + 1))
    return x[start: start + n]


def pad_batch(items: Sequence[np.ndarray]) -> torch.Tensor:
    """Zero padding is silence: the net masks it out of its statistics."""
    n = max(max(a.size for a in items), 1)
    out = np.zeros((len(items), n), np.float32)
    for i, a in enumerate(items):
        out[i, : a.size] = a
    return torch.from_numpy(out)


# ---------------------------------------------------------------------------------------------- train / score
def eer(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Equal error rate: where the false-acceptance and false-rejection rates meet."""
    if len(set(labels.tolist())) < 2:
        return None
    fpr, tpr, _ = roc_curve(labels, scores)
    fnr = 1 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    return float((fpr[i] + fnr[i]) / 2)


def summary(labels: np.ndarray, logits: np.ndarray) -> dict[str, Any]:
    two = len(set(labels.tolist())) == 2
    p = 1 / (1 + np.exp(-logits))
    return {
        "n": int(labels.size), "n_spoof": int(labels.sum()),
        "auc": round(float(roc_auc_score(labels, logits)), 4) if two else None,
        "eer": round(eer(labels, logits), 4) if two else None,
        "bona_fide_called_spoof": round(float((p[labels == 0] >= 0.5).mean()), 4) if (labels == 0).any() else None,
        "spoof_called_bona_fide": round(float((p[labels == 1] < 0.5).mean()), 4) if (labels == 1).any() else None,
    }


@torch.inference_mode()
def score(net: SpectralSpoofNet, corpus: Corpus, idx: Sequence[int], hp: SpoofHParams) -> np.ndarray:
    net.eval()
    limit = int(hp.max_eval_s * RATE)
    order = sorted(idx, key=lambda i: corpus.audio[i].size)  # similar lengths batch together
    out: dict[int, float] = {}
    for s in range(0, len(order), 16):
        chunk = order[s: s + 16]
        logits = net(pad_batch([corpus.audio[i][:limit] for i in chunk])).spoof_logit.numpy()
        out.update(zip(chunk, logits.tolist()))
    return np.array([out[i] for i in idx], np.float32)


def train_net(
    corpus: Corpus, train_idx: Sequence[int], val_idx: Sequence[int], hp: SpoofHParams,
    config: SpectralSpoofConfig = DEFAULT_SPOOF, desc: str = "spoof",
) -> tuple[SpectralSpoofNet, dict[str, Any]]:
    """Balanced-class training; the epoch with the best validation EER is kept, then temperature-scaled."""
    from training.train import fit_temperature

    torch.manual_seed(hp.seed)
    torch.set_num_threads(hp.threads)
    rng = np.random.default_rng(hp.seed)
    net = SpectralSpoofNet(config)
    opt = torch.optim.AdamW(net.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    per_epoch = max(1, len(train_idx) // hp.batch_size)
    if hp.max_steps_per_epoch:
        per_epoch = min(per_epoch, hp.max_steps_per_epoch)
    steps = hp.epochs * per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=hp.lr, total_steps=steps, pct_start=0.15)
    labels = corpus.labels(train_idx)
    # Sample both classes equally often, and each group (speaker / engine:voice) in proportion to its share.
    weights = np.where(labels == 1, 0.5 / max(labels.sum(), 1), 0.5 / max((labels == 0).sum(), 1))
    weights = weights / weights.sum()
    n_crop = int(hp.crop_s * RATE)
    donors = [i for i in train_idx if corpus.entries[i].label == 0]
    bank = ChannelBank(corpus.audio) if donors and (hp.transfer_spoof or hp.transfer_bona_fide) else None

    def moved(i: int, x: np.ndarray) -> np.ndarray:
        """`x` (a crop of file `i`) on a random bona fide training file's recording chain, with the hparams' chance."""
        chance = hp.transfer_spoof if corpus.entries[i].label == 1 else hp.transfer_bona_fide
        if bank is None or rng.random() >= chance:
            return x
        return bank.transfer(x, donors[int(rng.integers(len(donors)))])

    best: tuple[float, dict[str, torch.Tensor], int] | None = None
    history = []
    val_labels = corpus.labels(val_idx)
    step = 0
    for epoch in range(hp.epochs):
        net.train()
        picks = rng.choice(len(train_idx), size=steps // hp.epochs * hp.batch_size, p=weights)
        losses = []
        for b in tqdm(range(0, picks.size, hp.batch_size), desc=f"{desc} epoch {epoch + 1}", leave=False):
            batch = [train_idx[j] for j in picks[b: b + hp.batch_size]]
            x = pad_batch([augment(moved(i, crop(corpus.audio[i], n_crop, rng)), rng, hp.telephone) for i in batch])
            y = torch.tensor(corpus.labels(batch), dtype=torch.float32)
            loss = F.binary_cross_entropy_with_logits(net(x).spoof_logit, y)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            if step < steps - 1:
                sched.step()
            step += 1
            losses.append(float(loss.detach()))
        val = summary(val_labels, score(net, corpus, val_idx, hp))
        history.append({"epoch": epoch + 1, "loss": round(float(np.mean(losses)), 4), **val})
        logger.info("%s epoch %d: loss %.4f val %s", desc, epoch + 1, np.mean(losses), val)
        key = val["eer"] if val["eer"] is not None else float(np.mean(losses))
        if best is None or key <= best[0]:
            best = (key, {k: v.clone() for k, v in net.state_dict().items()}, epoch + 1)
    assert best is not None
    net.load_state_dict(best[1])
    temperature = fit_temperature(score(net, corpus, val_idx, hp), val_labels)
    net.set_temperature(temperature)
    return net, {"history": history, "best_epoch": best[2], "temperature": round(temperature, 4)}


def per_group(corpus: Corpus, idx: Sequence[int], logits: np.ndarray, key: Any, side: int = 1) -> dict[str, Any]:
    """Each engine's spoofs (side 1) against all bona fide files, or each speaker's bona fide files
    (side 0) against all spoofs, among `idx`: which voices the net finds hard."""
    labels = corpus.labels(idx)
    groups = sorted({key(corpus.entries[i]) for i, y in zip(idx, labels, strict=True) if y == side})
    out = {}
    for g in groups:
        keep = np.array([y != side or key(corpus.entries[i]) == g for i, y in zip(idx, labels, strict=True)])
        out[g] = summary(labels[keep], logits[keep])
    return out


# ---------------------------------------------------------------------------------------------- folds
def _engine(e: ManifestEntry) -> str:
    return str(e.meta.get("engine", "bona_fide"))


def _speaker(e: ManifestEntry) -> str:
    return str(e.meta.get("speaker", e.group or "unknown"))


def leave_one_out(
    corpus: Corpus, hp: SpoofHParams, axis: str, min_items: int = 40, config: SpectralSpoofConfig = DEFAULT_SPOOF,
) -> dict[str, Any]:
    """Leave-one-engine-out (axis 'engine') or leave-one-speaker-out (axis 'speaker') EER.

    Engine fold: train/val without that engine's files; test = the test split's bona fide + all of
    that engine's files. Speaker fold: train/val without that speaker's recordings and vocoder
    copies of them; test = all of them + the test split's spoofs made from other voices.
    """
    if axis == "engine":
        values = sorted({_engine(e) for e in corpus.entries if e.label == 1})

        def held(e: ManifestEntry, v: str) -> bool:
            return e.label == 1 and _engine(e) == v
    else:
        counts: dict[str, int] = {}
        for e in corpus.entries:
            if e.label == 0:
                counts[_speaker(e)] = counts.get(_speaker(e), 0) + 1
        values = sorted(v for v, n in counts.items() if n >= min_items)

        def held(e: ManifestEntry, v: str) -> bool:
            return _speaker(e) == v and (e.label == 0 or e.families == ["vocoder"])

    folds: dict[str, Any] = {}
    for v in values:
        train_idx = corpus.where("train", exclude=lambda e, v=v: held(e, v))
        val_idx = corpus.where("val", exclude=lambda e, v=v: held(e, v))
        out = [i for i, e in enumerate(corpus.entries) if held(e, v)]
        if axis == "engine":
            test_idx = corpus.where("test", exclude=lambda e: e.label == 1) + out
        else:
            test_idx = out + corpus.where("test", exclude=lambda e, v=v: e.label == 0 or held(e, v))
        net, info = train_net(corpus, train_idx, val_idx, hp, config, desc=f"{axis}={v}")
        folds[v] = {**summary(corpus.labels(test_idx), score(net, corpus, test_idx, hp)), "best_epoch": info["best_epoch"]}
        logger.info("%s %s: %s", axis, v, folds[v])
    eers = [f["eer"] for f in folds.values() if f["eer"] is not None]
    return {"folds": folds, "mean_eer": round(float(np.mean(eers)), 4) if eers else None}


# ---------------------------------------------------------------------------------------------- shortcut check
def nuisance_features(x: np.ndarray, config: SpectralSpoofConfig = DEFAULT_SPOOF) -> np.ndarray:
    """What a lazy model could use, measured on what the net hears (band-limited, silence trimmed by its
    own speech mask, before its level normalization): speech duration, total duration, level, roll-off."""
    net = _feature_net(config)
    with torch.inference_mode():
        audio = torch.from_numpy(x[None].astype(np.float32))
        low = AF.resample(audio, config.input_rate, config.band_rate)
        power = net.mel(low if low.shape[-1] >= config.n_fft else F.pad(low, (0, config.n_fft - low.shape[-1])))[0]
        _, mask = net.features(audio)
        m = mask[0].numpy()
        frames = power.numpy()[:, m] if m.any() else power.numpy()
    spectrum = frames.mean(axis=1) + 1e-12
    cum = np.cumsum(spectrum) / spectrum.sum()
    rolloff = float(np.searchsorted(cum, 0.85)) / spectrum.size
    return np.array([
        m.sum() * config.hop / config.band_rate,  # speech duration, s
        x.size / RATE,  # file duration, s
        10 * np.log10(float(np.mean(x**2)) + 1e-10),  # level, dB
        rolloff,  # 85 % spectral roll-off inside the band (fraction of the mel axis)
    ], np.float32)


_FEATURE_NETS: dict[SpectralSpoofConfig, SpectralSpoofNet] = {}


def _feature_net(config: SpectralSpoofConfig) -> SpectralSpoofNet:
    if config not in _FEATURE_NETS:
        _FEATURE_NETS[config] = SpectralSpoofNet(config).eval()
    return _FEATURE_NETS[config]


def shortcut_baseline(corpus: Corpus) -> dict[str, Any]:
    """Logistic regression on nuisance features, train split -> test split. Near 0.5 AUC: no shortcut left.

    `all` and one entry per feature of `nuisance_features`; `channel_profile`: the recording chain alone
    (`models.channel.channel_profile` of the decoded file: average spectrum and noise floor), the shortcut a
    corpus whose bona fide and spoofed speech come through different chains leaves open.
    """
    feats = np.stack([nuisance_features(a) for a in tqdm(corpus.audio, desc="nuisance features", leave=False)])
    channels = np.stack([channel_profile(a) for a in tqdm(corpus.audio, desc="channel profiles", leave=False)])
    names = ["speech_s", "file_s", "level_db", "rolloff"]
    tr, te = corpus.where("train"), corpus.where("test")
    out: dict[str, Any] = {}
    for table, cols, label in [
        (feats, list(range(4)), "all"), *[(feats, [k], names[k]) for k in range(4)],
        (channels, slice(None), "channel_profile"),
    ]:
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
        clf.fit(table[tr][:, cols], corpus.labels(tr))
        auc = roc_auc_score(corpus.labels(te), clf.predict_proba(table[te][:, cols])[:, 1])
        out[label] = round(float(max(auc, 1 - auc)), 4)  # a feature that works upside down is still a shortcut
    return out


# ---------------------------------------------------------------------------------------------- bundle
def attach_spoof_net(
    base: Path, net: SpectralSpoofNet, out: Path, card_text: str, extra: dict[str, Any], as_expert: bool = False,
) -> Path:
    """A new av_alignment bundle: `base`'s weights with `net` as its spoof head, or (`as_expert`) beside its
    spoof head as the speech expert, `base`'s statistics files kept for its own head."""
    loaded = load_bundle(base)
    part = "speech_expert" if as_expert else "spoof_net"
    config = replace(loaded.config, **{part: net.config})
    from models.av_alignment import build_av_alignment

    model = build_av_alignment(config)
    replaced = () if as_expert else ("spoof_pool.", "spoof_head.")
    state = {k: v for k, v in loaded.model.state_dict().items() if not (replaced and k.startswith(replaced))}
    state.update({f"{part}.{k}": v for k, v in net.state_dict().items()})
    model.load_state_dict(state, strict=True)
    path = save_bundle(model, out, arch=loaded.arch, config=config, trained=True, card_text=card_text, extra=extra)
    if as_expert:
        for name, stats in ((OOD_FILE, loaded.ood), (CHANNEL_OOD_FILE, loaded.channel_ood)):
            if stats is not None:
                attach_ood(path, stats, name)
    return path


def corpus_line(corpus: Corpus) -> dict[str, Any]:
    bona = {}
    spoof = {}
    for e, a in zip(corpus.entries, corpus.audio, strict=True):
        table = bona if e.label == 0 else spoof
        key = f"{e.source} ({e.meta.get('licence', '?')})"
        n, s = table.get(key, (0, 0.0))
        table[key] = (n + 1, s + a.size / RATE)
    return {
        "bona_fide": {k: {"files": n, "minutes": round(s / 60, 1)} for k, (n, s) in sorted(bona.items())},
        "spoofed": {k: {"files": n, "minutes": round(s / 60, 1)} for k, (n, s) in sorted(spoof.items())},
    }


def spoof_card(report: dict[str, Any], command: str) -> str:
    """The av_alignment card for a bundle whose spoof head came from `main`."""
    ind = report["in_distribution"]["test"]
    lines = [
        "# av_alignment: v1's lip sync and offset, with a spoof head trained on real speech and real TTS",
        "",
        (
            "The Wav2Vec2 encoder, lip-sync and offset weights are copied unchanged from the base version "
            f"({report['base']}); its card says what they were trained on. The spoof head is `models.spoof`: "
            "band-limited to 0-4 kHz, silence masked, per-band mean and level normalized, a small CNN with "
            "masked statistics pooling, temperature-scaled."
        ),
        "",
        f"Command: `{command}`.",
        "",
        f"Wall time: {report['wall_s'] / 60:.1f} min on 2 CPU cores (corpus decoding, the shortcut baseline, "
        "training and, where listed below, every leave-one-out fold).",
        "",
        "## Training data (every source, with its licence)",
        "",
        "| side | source (licence) | files | minutes |",
        "| --- | --- | --- | --- |",
    ]
    for side, table in report["corpus"].items():
        for key, row in table.items():
            lines.append(f"| {side} | {key} | {row['files']} | {row['minutes']} |")
    lines += [
        "",
        (
            "Attribution: Asterisk prompts (Allison Smith, Carlo, Menardi) are CC-BY-SA-3.0 (Digium / the Asterisk "
            "project); festvox-ru (msu_ru_nsh) BSD-like; codec2 examples LGPL-2.1; pocketsphinx test data BSD-2; "
            "ALSA sounds GPL-2. Spoofed speech came from espeak-ng (GPL-3), flite (BSD-like), festival voices "
            "(free/BSD-like), piper (GPL-3 engine, MIT joe voice), WORLD (pyworld, MIT) and Griffin-Lim "
            "(torchaudio, BSD). GPL tools only generated training data; none ships with the service."
        ),
        "",
        "## Scores (the corpus's test split, and folds that never saw the held-out engine or speaker)",
        "",
        (
            f"- In distribution (test split): EER {ind['eer']}, AUC {ind['auc']}, n {ind['n']} "
            f"({ind['n_spoof']} spoofed); bona fide called spoof at 0.5: {ind['bona_fide_called_spoof']}, "
            f"spoofs called bona fide: {ind['spoof_called_bona_fide']}; "
            f"temperature {report['in_distribution']['temperature']}."
        ),
    ]
    for key, title in [("leave_one_engine_out", "Leave one engine out"), ("leave_one_speaker_out", "Leave one speaker out")]:
        if key in report:
            folds = report[key]["folds"]
            lines.append(f"- {title}: mean EER {report[key]['mean_eer']} ("
                         + ", ".join(f"{k} {v['eer']}" for k, v in folds.items()) + ").")
    if "shortcut_baseline_auc" in report:
        lines.append(f"- Shortcut baseline (logistic regression on nuisance features, train -> test), AUC: "
                     f"{report['shortcut_baseline_auc']}.")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="spectrashield train-spoof", description=__doc__.split("\n")[0])
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="report directory (scores, folds)")
    ap.add_argument("--base", default="v1", help="av_alignment version whose other weights are kept")
    ap.add_argument(
        "--as-expert", action="store_true",
        help="keep the base's spoof head (and its statistics) and add the new head beside it as the speech expert",
    )
    ap.add_argument("--version", default=None, help="write weights/av_alignment/VERSION (omit: report only)")
    ap.add_argument("--weights-dir", type=Path, default=None)
    ap.add_argument("--epochs", type=int, default=SpoofHParams.epochs)
    ap.add_argument("--fold-epochs", type=int, default=4)
    ap.add_argument("--fold-steps", type=int, default=40, help="at most this many batches per fold epoch")
    ap.add_argument("--folds", choices=["none", "engine", "speaker", "both"], default="both")
    ap.add_argument("--shortcut", action="store_true", help="also run the nuisance-feature baseline")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--transfer-spoof", type=float, default=0.0,
                    help="chance a spoofed training crop gets a random bona fide file's recording chain (ChannelBank)")
    ap.add_argument("--transfer-bona-fide", type=float, default=0.0, help="the same for bona fide crops")
    ap.add_argument("--telephone", type=float, default=SpoofHParams.telephone,
                    help="chance a training crop goes through a phone codec (G.711, AMR-NB, G.726 at 8 kHz)")
    ap.add_argument(
        "--hold-out-source", action="append", default=[],
        help="leave this bona fide source's speakers out of everything (their real voices then serve "
        "`generate-independent --real-speech`), e.g. codec2, pocketsphinx, alsa",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    corpus = load_corpus(args.manifest, hold_out_sources=args.hold_out_source)
    hp = SpoofHParams(epochs=args.epochs, seed=args.seed, transfer_spoof=args.transfer_spoof,
                      transfer_bona_fide=args.transfer_bona_fide, telephone=args.telephone)
    report: dict[str, Any] = {
        "manifest": str(args.manifest), "base": args.base, "hparams": asdict(hp), "corpus": corpus_line(corpus),
        "held_out_sources": args.hold_out_source,
    }
    if args.shortcut:
        report["shortcut_baseline_auc"] = shortcut_baseline(corpus)
        logger.info("shortcut baseline: %s", report["shortcut_baseline_auc"])
    net = None
    if args.epochs > 0:
        net, info = train_net(corpus, corpus.where("train"), corpus.where("val"), hp)
        test = corpus.where("test")
        test_logits = score(net, corpus, test, hp)
        report["in_distribution"] = {
            "test": summary(corpus.labels(test), test_logits), **info,
            "per_engine": per_group(corpus, test, test_logits, _engine),
            "per_speaker": per_group(corpus, test, test_logits, _speaker, side=0),
        }
        logger.info("in distribution: %s", report["in_distribution"]["test"])
    fold_hp = replace(hp, epochs=args.fold_epochs, max_steps_per_epoch=args.fold_steps)
    if args.folds in ("engine", "both"):
        report["leave_one_engine_out"] = leave_one_out(corpus, fold_hp, "engine")
    if args.folds in ("speaker", "both"):
        report["leave_one_speaker_out"] = leave_one_out(corpus, fold_hp, "speaker")
    report["wall_s"] = round(time.monotonic() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)  # again: a corpus rebuild may have removed it meanwhile
    (args.out / "spoof_report.json").write_text(json.dumps(report, indent=2) + "\n")
    if args.version and net is not None:
        root = args.weights_dir or weights_root()
        out = bundle_dir("av_alignment", args.version, root)
        if out.exists():
            raise SystemExit(f"{out} exists; pick another --version")
        attach_spoof_net(
            bundle_dir("av_alignment", args.base, root), net, out,
            spoof_card(report, "spectrashield train-spoof " + " ".join(argv if argv is not None else sys.argv[1:])),
            {"spoof_training": report}, as_expert=args.as_expert,
        )
        logger.info("wrote %s", out)
    print(json.dumps({k: report[k] for k in report if k not in ("corpus", "hparams")}, indent=2)[:6000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
