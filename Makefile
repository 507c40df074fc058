# eatlab: `make run` installs and runs the main job on its offline default; `make test` installs and runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast lint format bench gpu-check train-spacy clean

DATA ?= ../shared/data/wikiann

install: $(STAMP)

# torch first (the CPU wheel), then everything else constrained to it so nothing pulls a CUDA build
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

run: install
	$(BIN)/eatlab data.limit=16

test: install
	$(BIN)/ruff check eatlab tests
	$(BIN)/ruff format --check eatlab tests
	$(BIN)/lint-imports --no-cache
	$(BIN)/pytest -q

# the fast lane (under 90 s on 2 cores): the import layers, then every test not marked slow, on both cores
test-fast: install
	$(BIN)/lint-imports --no-cache
	$(BIN)/pytest -q -n 2 -m "not slow"

lint:
	$(BIN)/ruff check eatlab tests && $(BIN)/ruff format --check eatlab tests

format:
	$(BIN)/ruff check --fix eatlab tests && $(BIN)/ruff format eatlab tests

bench: install
	$(BIN)/eatlab-bench

# the GPU code paths on tiny local models, one line per check (run it where a CUDA GPU is available; skips elsewhere)
gpu-check: install
	$(BIN)/python -m eatlab.cli.gpu_check

# spaCy NER trained on English WikiANN (CPU, about 30 min, 60 min budget), then scored on the full English test; not in CI
train-spacy: install
	nice -n 10 $(BIN)/eatlab-train-extractor extractor=spacy_wikiann data.root=$(DATA)
	$(BIN)/eatlab-eval-extractor extractor=spacy_wikiann data.root=$(DATA)

clean:
	rm -rf $(VENV) outputs
