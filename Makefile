# Two entry points for a fresh machine with only Python 3.11: `make serve` and `make test`.
# Both create .venv and install the project into it when pyproject.toml changed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test install weights-init clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

serve: $(STAMP)
	$(BIN)/serve run cluster/serve.cpu.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

weights-init: $(STAMP)
	$(BIN)/python -m models.init_weights --version v0

clean:
	rm -rf $(VENV) build *.egg-info
