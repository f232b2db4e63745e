"""Bona fide speech adapters on tiny trees in each package's installed layout, and the speech corpus
built from them with fake engines; real engines are tried only where they are installed.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from training.manifest import read_manifest
from training.sources import (
    SourceLayoutError,
    SpeechItem,
    alsa_sounds,
    asterisk,
    clean_transcript,
    codec2_examples,
    festvox_ru,
    klettres,
    ktuberling,
    pocketsphinx_testdata,
    wav_info,
)
from training.speech_corpus import (
    ANY_LANGUAGE,
    ENGINES,
    Engine,
    Voice,
    build_corpus,
    main,
    read_wav,
    recombine_sentences,
    split_of,
    text_id,
    write_wav,
)


def _wav(path: Path, seconds: float, rate: int = 8000) -> Path:
    """Noise-modulated tone, different for every path (Asterisk's duplicate check compares bytes)."""
    rng = np.random.default_rng(int(hashlib.sha1(str(path).encode()).hexdigest()[:8], 16))
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 300) * t) + 0.05 * rng.standard_normal(t.size)
    write_wav(path, x, rate)
    return path


def _texts(items: list[SpeechItem]) -> dict[str, str | None]:
    return {item.path.name: item.text for item in items}


# ---------------------------------------------------------------------------------------------
# Adapters

RU_SENTENCES = {
    "msu_ru_nsh_0001": "Она завела, прядь волнистых вол+ос за ухо, и пошла через улицу.",
    "msu_ru_nsh_0002": "Со спокойным мужеством, Скайлс, ожидал всего, в этом безумном городе.",
    "msu_ru_nsh_0003": "Корреспондент американской газеты проходя мимо увидел молодую женщину в ситцевом платье.",
    "msu_ru_nsh_0004": "Мальчик сидел на куче песку один во всём сквере и смотрел на звёзды.",
}


def _festvox_tree(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "txt.done.data").write_text(
        "".join(f'( {key} "{text}" )\n' for key, text in RU_SENTENCES.items()), encoding="utf-8"
    )
    for i, key in enumerate(RU_SENTENCES):
        _wav(root / "wav" / f"{key}.wav", 0.3 if i == 3 else 1.0 + i * 0.2, 16000)
    return root


def test_festvox_ru_reads_the_database_with_its_transcripts(tmp_path: Path) -> None:
    items = festvox_ru(_festvox_tree(tmp_path / "msu_ru_nsh_clunits"))
    assert _texts(items) == {f"{k}.wav": RU_SENTENCES[k] for k in list(RU_SENTENCES)[:3]}  # 0004 is 0.3 s
    assert {(i.speaker, i.language, i.licence, i.source) for i in items} == {
        ("msu_ru_nsh", "ru", "BSD-like", "festvox-ru")
    }


def _asterisk_tree(root: Path) -> tuple[Path, Path]:
    en = root / "en_US_f_Allison"
    _wav(en / "hello-world.wav", 1.5)
    shutil.copy(en / "hello-world.wav", en / "hello-again.wav")  # byte-identical copy of a prompt
    _wav(en / "beep.wav", 0.9)  # a tone, long enough: only its transcript says it is no speech
    _wav(en / "tt-monkeys.wav", 2.0)
    _wav(en / "digits" / "1.wav", 0.8)
    _wav(en / "letters" / "at.wav", 0.7)
    _wav(en / "letters" / "a.wav", 0.3)  # too short
    _wav(en / "silence" / "1.wav", 1.0)
    _wav(root / "es_MX_f_Allison" / "hola.wav", 1.2)
    _wav(root / "es_MX_f_Allison" / "beep.wav", 0.9)
    _wav(root / "it_IT_m_Carlo" / "ciao.wav", 1.1)
    _wav(root / "it_IT_f_Menardi" / "ciao.wav", 1.3)
    _wav(root / "it_IT_f_Menardi" / "phonetic" / "ICAO" / "a_p.wav", 0.9)
    _wav(root / "fr_CA_f_June" / "bonjour.wav", 1.0)
    _wav(root / "ru_RU_f_IvrvoiceRU" / "digits" / "1.wav", 0.8)
    transcripts = root.parent / "core-sounds-en.txt.gz"
    with gzip.open(transcripts, "wt", encoding="utf-8") as f:
        f.write(
            "; Core Asterisk Sounds in English\n\nhello-world: Hello, world.\nhello-again: Hello, world.\n"
            "beep: [this is a simple beep tone]\ntt-monkeys: [sound of monkeys screaming]\n"
            "digits/1: one\nletters/at: at [@]\nletters/a: a\nsilence/1: (1 second of silence)\n"
        )
    return root, transcripts


def test_asterisk_voices_texts_and_exclusions(tmp_path: Path) -> None:
    root, transcripts = _asterisk_tree(tmp_path / "sounds")
    items = asterisk(root, transcripts)
    found = {(i.path.relative_to(root).as_posix(), i.speaker, i.language, i.text) for i in items}
    assert found == {
        ("en_US_f_Allison/hello-again.wav", "allison", "en", "Hello, world."),  # sorted first; the copy is dropped
        ("en_US_f_Allison/digits/1.wav", "allison", "en", "one"),
        ("en_US_f_Allison/letters/at.wav", "allison", "en", "at"),
        ("es_MX_f_Allison/hola.wav", "allison", "es", None),
        ("it_IT_m_Carlo/ciao.wav", "carlo", "it", None),
        ("it_IT_f_Menardi/ciao.wav", "menardi", "it", None),
        ("it_IT_f_Menardi/phonetic/ICAO/a_p.wav", "menardi", "it", None),
        ("fr_CA_f_June/bonjour.wav", "june", "fr", None),
        ("ru_RU_f_IvrvoiceRU/digits/1.wav", "ivrvoice_ru", "ru", None),
    }
    by_package = {i.speaker + i.language: i.package for i in items}
    assert by_package["menardiit"] == "asterisk-prompt-it-menardi-wav"
    assert by_package["allisones"] == "asterisk-core-sounds-es-wav"
    assert by_package["junefr"] == "asterisk-core-sounds-fr-wav"
    assert by_package["ivrvoice_ruru"] == "asterisk-core-sounds-ru-wav"
    assert {i.licence for i in items} == {"CC-BY-SA-3.0"}


def test_asterisk_without_transcripts_still_drops_tones(tmp_path: Path) -> None:
    root, _ = _asterisk_tree(tmp_path / "sounds")
    items = asterisk(root, None)
    names = {i.path.name for i in items}
    assert "beep.wav" not in names and "tt-monkeys.wav" not in names
    assert all(i.text is None for i in items)


def test_clean_transcript() -> None:
    assert clean_transcript("at [@]") == "at"
    assert clean_transcript("<beep ascending>") == ""
    assert clean_transcript("(10 seconds of silence)") == ""
    assert clean_transcript("...has joined the conference.") == "...has joined the conference."


def test_codec2_keeps_only_unprocessed_recordings(tmp_path: Path) -> None:
    for name in ("forig", "f2400", "m2400", "all", "david4", "vk2tpm_004", "hts1a", "hts1a_1300", "mmt1"):
        _wav(tmp_path / f"{name}.wav", 1.0)
    _wav(tmp_path / "wia_16kHz.wav", 1.0, 16000)
    items = codec2_examples(tmp_path)
    assert sorted(i.speaker for i in items) == ["forig", "hts1a", "mmt1", "wia_16kHz"]
    assert {(i.language, i.licence, i.text) for i in items} == {("en", "LGPL-2.1", None)}


def test_pocketsphinx_reads_transcripts_and_speakers_by_folder(tmp_path: Path) -> None:
    _wav(tmp_path / "librivox" / "sense_and_sensibility_01_austen_64kb-0880.wav", 3.0, 16000)
    (tmp_path / "librivox" / "transcription").write_text(
        "<s> he was not an ill disposed young man </s> (sense_and_sensibility_01_austen_64kb-0880)\n"
    )
    _wav(tmp_path / "cards" / "001.wav", 1.1, 16000)
    _wav(tmp_path / "cards" / "002.wav", 1.2, 16000)
    (tmp_path / "cards" / "cards.transcription").write_text("<s> ten of clubs  </s> (001)\n")
    (tmp_path / "goforward.raw").write_bytes(b"\0" * 100)
    items = pocketsphinx_testdata(tmp_path)
    assert {(i.speaker, i.path.name, i.text) for i in items} == {
        ("librivox", "sense_and_sensibility_01_austen_64kb-0880.wav", "he was not an ill disposed young man"),
        ("cards", "001.wav", "ten of clubs"),
        ("cards", "002.wav", None),
    }
    assert {i.licence for i in items} == {"BSD-2"}


def test_alsa_sounds_leave_noise_out(tmp_path: Path) -> None:
    for name in ("Front_Left", "Rear_Center", "Noise"):
        _wav(tmp_path / f"{name}.wav", 1.4, 48000)
    items = alsa_sounds(tmp_path)
    assert _texts(items) == {"Front_Left.wav": "Front Left", "Rear_Center.wav": "Rear Center"}
    assert {(i.speaker, i.language, i.licence) for i in items} == {("alsa", "en", "GPL-2")}


def _ogg(path: Path, seconds: float, rate: int = 48_000) -> Path:
    """Opus in Ogg (the packages ship Vorbis; the adapters read only the container's duration)."""
    import av

    from training.synth_audio import encode_audio_packets

    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    with av.open(str(path), "w", format="ogg") as out:
        stream = out.add_stream("libopus", rate=rate)
        stream.layout = "mono"
        for packet in encode_audio_packets(stream, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate):
            out.mux(packet)
    return path


def test_kde_voices_are_one_speaker_per_language_capped_and_long_enough(tmp_path: Path) -> None:
    for i in range(5):
        _ogg(tmp_path / "klettres" / "fr" / "alpha" / f"{chr(65 + i)}.ogg", 1.0)
    _ogg(tmp_path / "klettres" / "pt_BR" / "syllab" / "ba.ogg", 1.2)
    _ogg(tmp_path / "klettres" / "pt_BR" / "syllab" / "b.ogg", 0.3)  # shorter than MIN_DURATION_S
    (tmp_path / "klettres" / "pics").mkdir()  # not a voice: no recordings in it
    items = klettres(tmp_path / "klettres", per_voice=3)
    assert {(i.speaker, i.language) for i in items} == {("klettres_fr", "fr"), ("klettres_pt_BR", "pt")}
    assert [i.path.name for i in items if i.speaker == "klettres_fr"] == ["A.ogg", "B.ogg", "D.ogg"]  # evenly spaced
    assert [i.path.name for i in items if i.speaker == "klettres_pt_BR"] == ["ba.ogg"]
    assert {(i.text, i.licence, i.source, i.package) for i in items} == {(None, "GPL-2+", "klettres", "klettres-data")}
    _ogg(tmp_path / "ktuberling" / "sr@latin" / "oko.ogg", 0.9)
    (tmp_path / "ktuberling" / "sr@latin.soundtheme").write_text("<theme/>")
    items = ktuberling(tmp_path / "ktuberling")
    assert [(i.speaker, i.language, i.path.name) for i in items] == [("ktuberling_sr@latin", "sr", "oko.ogg")]


@pytest.mark.parametrize(
    "adapter", [festvox_ru, asterisk, codec2_examples, pocketsphinx_testdata, alsa_sounds, klettres, ktuberling],
)
def test_a_missing_layout_is_a_clear_error(tmp_path: Path, adapter) -> None:
    with pytest.raises(ValueError, match="expected layout|none of"):
        adapter(tmp_path / "not-installed")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceLayoutError):
        adapter(tmp_path / "empty")


def test_wav_info_reads_non_pcm_headers(tmp_path: Path) -> None:
    path = tmp_path / "ulaw.wav"
    data = bytes(8000 * 3)  # 3 s of 8-bit u-law
    fmt = struct.pack("<HHIIHH", 7, 1, 8000, 8000, 1, 8)
    path.write_bytes(
        b"RIFF" + struct.pack("<I", 4 + 8 + 18 + 8 + len(data)) + b"WAVE"
        + b"fmt " + struct.pack("<I", 18) + fmt + b"\0\0" + b"data" + struct.pack("<I", len(data)) + data
    )
    info = wav_info(path)
    assert (info.rate, info.format_tag, info.duration_s) == (8000, 7, 3.0)


# ---------------------------------------------------------------------------------------------
# Texts and splits


def test_recombined_sentences_are_new() -> None:
    sentences = list(RU_SENTENCES.values())
    made = recombine_sentences(sentences, 30, seed=0)
    assert len(made) == 30 and len(set(made)) == 30
    database = {text_id(s.replace("+", "")) for s in sentences}
    trigrams = set()
    for s in sentences:
        words = text_id(s.replace("+", "")).split()
        trigrams.update(zip(words, words[1:], words[2:]))
    vocabulary = {w for s in database for w in s.split()}
    for sentence in made:
        words = text_id(sentence.replace("+", "")).split()
        assert text_id(sentence.replace("+", "")) not in database
        assert not set(zip(words, words[1:], words[2:])) & trigrams, sentence
        assert set(words) <= vocabulary
    assert recombine_sentences(sentences, 30, seed=0) == made
    assert recombine_sentences(sentences, 30, seed=1) != made


def test_text_ids_and_splits() -> None:
    assert text_id("Thank you.") == text_id("thank  you") == "thank you"
    assert text_id("Вол+ос.".replace("+", "")) == "волос"
    splits = [split_of(f"text:{i}", 0) for i in range(3000)]
    share = {name: splits.count(name) / len(splits) for name in ("train", "val", "test")}
    assert abs(share["train"] - 0.70) < 0.03 and abs(share["val"] - 0.15) < 0.03
    assert splits == [split_of(f"text:{i}", 0) for i in range(3000)]
    assert splits != [split_of(f"text:{i}", 1) for i in range(3000)]


# ---------------------------------------------------------------------------------------------
# The corpus with fake engines


def _fake_tts(text: str, language: str, out_wav: Path, rng: random.Random) -> dict:
    if "fail" in text:
        raise RuntimeError("engine crashed")
    seconds = 0.2 if text == "Short." else 0.7 + 0.1 * len(text.split())
    t = np.arange(int(seconds * 16000)) / 16000
    write_wav(out_wav, 0.4 * np.sin(2 * np.pi * rng.uniform(100, 200) * t), 16000)
    return {"f": 1}


def _fake_vocoder(source: Path, out_wav: Path, rng: random.Random) -> dict:
    samples, rate = read_wav(source)
    write_wav(out_wav, np.roll(samples, rng.randint(1, 100)), rate)
    return {}


def _never() -> bool:
    return False


def _fake_engines(tmp_path: Path) -> list[Engine]:
    return [
        Engine("fake-tts", "tts", (
            Voice("en1", ("en",), "spk-en", _fake_tts, ("pip:numpy",), "MIT"),
            Voice("multi", ("es", "ru"), "spk-multi", _fake_tts, (), "MIT"),
            Voice("ru-db", ("ru",), "msu_ru_nsh", _fake_tts, (), "BSD-like",
                  database=tmp_path / "msu_ru_nsh_clunits" / "etc" / "txt.done.data"),
        ), "MIT"),
        Engine("fake-vocoder", "vocoder", (Voice("voc", (ANY_LANGUAGE,), "", _fake_vocoder, (), "MIT"),), "MIT"),
        Engine("absent", "tts", (Voice("x", ("en",), "x", _fake_tts, available=_never),), "MIT"),
    ]


def _fake_sources(tmp_path: Path) -> dict:
    ru = _festvox_tree(tmp_path / "msu_ru_nsh_clunits")
    sounds, transcripts = _asterisk_tree(tmp_path / "sounds")
    alsa = tmp_path / "alsa"
    for name in ("Front_Left", "Noise"):
        _wav(alsa / f"{name}.wav", 1.4, 48000)
    return {
        "festvox-ru": lambda: festvox_ru(ru),
        "asterisk": lambda: asterisk(sounds, transcripts),
        "alsa": lambda: alsa_sounds(alsa),
    }


def _build(tmp_path: Path, out: str, seed: int = 0, per_engine: int = 12) -> Path:
    return build_corpus(
        tmp_path / out, per_engine=per_engine, seed=seed, sources=_fake_sources(tmp_path),
        engines=_fake_engines(tmp_path), workers=2,
    )


META_KEYS = {"speaker", "language", "engine", "voice", "package", "package_version", "licence", "text",
             "sample_rate", "duration_s"}


def test_build_corpus_rows(tmp_path: Path) -> None:
    manifest = _build(tmp_path, "corpus")
    entries = list(read_manifest(manifest))
    bona = [e for e in entries if e.label == 0]
    tts = [e for e in entries if e.source == "tts:fake-tts"]
    vocoded = [e for e in entries if e.source == "vocoder:fake-vocoder"]
    assert len(bona) == 3 + 9 + 1 and len(tts) == 12  # every bona fide file once
    assert len(vocoded) == min(12, len(bona))  # one re-synthesis per recording, at most per_engine
    assert len(entries) == len(bona) + len(tts) + len(vocoded)
    for e in entries:
        assert e.kind == "audio" and e.modality_labels.audio == e.label
        assert META_KEYS <= set(e.meta)
        assert (manifest.parent / e.path).is_file()
        rate, duration = e.meta["sample_rate"], e.meta["duration_s"]
        assert read_wav(manifest.parent / e.path)[1] == rate and duration >= 0.6
    assert all(e.families == [] and e.meta["engine"] == "bona_fide" and e.group == e.meta["speaker"] for e in bona)
    assert {e.source for e in bona} == {"festvox-ru", "asterisk", "alsa"}
    assert {e.meta["sample_rate"] for e in bona} == {8000, 16000, 48000}  # original rates kept
    assert all(e.families == ["tts"] and e.group == f"fake-tts:{e.meta['voice']}" for e in tts)
    assert {e.meta["voice"] for e in tts} == {"en1", "multi", "ru-db"}
    assert {e.meta["language"] for e in tts if e.meta["voice"] == "multi"} == {"es", "ru"}
    assert all(e.families == ["vocoder"] and e.group == e.meta["speaker"] for e in vocoded)
    assert {e.meta["speaker"] for e in vocoded} == {e.meta["speaker"] for e in bona}
    summary = json.loads((manifest.parent / "corpus.json").read_text())
    assert summary["skipped_engines"] == {"absent": "not installed"}
    assert summary["counts"]["label"] == {"bona_fide": len(bona), "spoof": len(tts) + len(vocoded)}
    assert sum(summary["counts"]["split"].values()) == len(entries)


def test_a_text_keeps_its_split_and_the_voice_database_is_never_read_out(tmp_path: Path) -> None:
    entries = list(read_manifest(_build(tmp_path, "corpus", per_engine=30)))
    splits: dict[str, set[str]] = {}
    for e in entries:
        if e.meta["text"]:
            splits.setdefault(text_id(e.meta["text"].replace("+", "")), set()).add(e.split)
    assert all(len(s) == 1 for s in splits.values()), splits
    shared = {text_id(e.meta["text"]) for e in entries if e.label == 1 and e.meta["text"]}
    assert shared & {text_id(e.meta["text"]) for e in entries if e.label == 0 and e.meta["text"]}
    database = {text_id(s.replace("+", "")) for s in RU_SENTENCES.values()}
    db_voice = [e for e in entries if e.meta["voice"] == "ru-db"]
    assert db_voice and not {text_id(e.meta["text"].replace("+", "")) for e in db_voice} & database
    other_ru = {text_id(e.meta["text"].replace("+", "")) for e in entries if e.meta["voice"] == "multi"
                and e.meta["language"] == "ru"}
    assert other_ru <= database  # other voices may read the real sentences
    for e in entries:
        if e.meta["engine"] == "fake-vocoder":
            source = next(b for b in entries if b.path == e.meta["source_recording"])
            assert source.split == e.split and source.meta["speaker"] == e.meta["speaker"]


def test_build_corpus_is_deterministic_and_skips_failures(tmp_path: Path) -> None:
    sources = _fake_sources(tmp_path)
    engines = _fake_engines(tmp_path)
    first = build_corpus(tmp_path / "a", per_engine=10, seed=3, sources=sources, engines=engines, workers=3)
    second = build_corpus(tmp_path / "b", per_engine=10, seed=3, sources=sources, engines=engines, workers=1)
    other = build_corpus(tmp_path / "c", per_engine=10, seed=4, sources=sources, engines=engines, workers=2)
    assert first.read_text() == second.read_text()
    assert first.read_text() != other.read_text()
    for e in read_manifest(first):
        assert (first.parent / e.path).read_bytes() == (second.parent / e.path).read_bytes()


def test_failed_and_too_short_utterances_are_counted_not_fatal(tmp_path: Path) -> None:
    def says(text: str) -> Voice:
        def synth(_: str, language: str, out_wav: Path, rng: random.Random) -> dict:
            return _fake_tts(text, language, out_wav, rng)

        return Voice("v", ("en",), "s", synth)

    engines = [Engine("bad", "tts", (says("please fail"),), "MIT"), Engine("short", "tts", (says("Short."),), "MIT")]
    manifest = build_corpus(tmp_path / "out", per_engine=3, seed=0, sources=_fake_sources(tmp_path), engines=engines)
    assert all(e.label == 0 for e in read_manifest(manifest))
    failures = json.loads((manifest.parent / "corpus.json").read_text())["failures"]
    assert failures["by_reason"] == {"error": 3, "too_short": 3}
    assert "engine crashed" in failures["errors"][0]["error"]


def test_a_text_that_comes_out_too_short_is_replaced(tmp_path: Path) -> None:
    def synth(text: str, language: str, out_wav: Path, rng: random.Random) -> dict:
        return _fake_tts("Short." if len(text.split()) < 2 else text, language, out_wav, rng)

    engines = [Engine("picky", "tts", (Voice("v", ("en",), "s", synth),), "MIT")]
    manifest = build_corpus(tmp_path / "out", per_engine=4, seed=0, sources=_fake_sources(tmp_path), engines=engines)
    spoofs = [e for e in read_manifest(manifest) if e.label == 1]
    assert len(spoofs) == 4  # en texts: "Hello, world.", "Front Left", "one", "at"
    assert all(len(e.meta["text"].split()) >= 2 and e.meta["duration_s"] >= 0.6 for e in spoofs)
    assert all(e.split == split_of(f"text:{text_id(e.meta['text'])}", 0) for e in spoofs)


def test_cap_per_speaker(tmp_path: Path) -> None:
    manifest = build_corpus(
        tmp_path / "out", per_engine=0, seed=0, sources=_fake_sources(tmp_path), engines=[],
        max_bona_fide_per_speaker=2,
    )
    speakers = [e.meta["speaker"] for e in read_manifest(manifest)]
    assert {s: speakers.count(s) for s in set(speakers)} == {"msu_ru_nsh": 2, "allison": 2, "carlo": 1,
                                                             "menardi": 2, "june": 1, "ivrvoice_ru": 1, "alsa": 1}


def test_the_progress_bar_can_be_turned_off(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build_corpus(tmp_path / "on", per_engine=0, seed=0, sources=_fake_sources(tmp_path / "a"), engines=[])
    assert "speech corpus" in capsys.readouterr().err
    build_corpus(tmp_path / "off", per_engine=0, seed=0, sources=_fake_sources(tmp_path / "b"), engines=[], progress=False)
    assert "speech corpus" not in capsys.readouterr().err


def test_cli_rejects_unknown_engines(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--engines", "espeak-ng,nope"])


# ---------------------------------------------------------------------------------------------
# Real engines, where installed


def _voiced(path: Path, rate: int = 16000) -> Path:
    """A vowel-like signal: harmonics of a gliding 120-160 Hz F0, 1.2 s."""
    t = np.arange(int(1.2 * rate)) / rate
    phase = 2 * np.pi * np.cumsum(120 + 40 * t / t[-1]) / rate
    x = sum(np.sin(k * phase) / k for k in range(1, 20)) * np.hanning(t.size)
    write_wav(path, 0.3 * x / np.abs(x).max(), rate)
    return path


@pytest.mark.parametrize("engine", ENGINES, ids=lambda engine: engine.name)
def test_real_engine_says_something(tmp_path: Path, engine: Engine) -> None:
    voice = next((v for v in engine.voices if v.available() and ("en" in v.languages or ANY_LANGUAGE in v.languages)),
                 None)
    if voice is None:
        pytest.skip(f"{engine.name} is not installed")
    out = tmp_path / "out.wav"
    if engine.family == "vocoder":
        voice.synth(_voiced(tmp_path / "source.wav"), out, random.Random(0))
    else:
        voice.synth("Please enter your account number.", "en", out, random.Random(0))
    samples, rate = read_wav(out)
    assert len(samples) > 0.5 * rate
    assert np.sqrt(np.mean(samples.astype(float) ** 2)) > 100
