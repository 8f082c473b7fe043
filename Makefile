# Entry points, each setting up the virtual environment first: `make demo`, `make web`, `make test` (and the slower
# `make test-integration`).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# PyTorch's CPU wheel (the machine's local file where present); a GPU machine takes the default CUDA build instead.
TORCH_CPU ?= torch==2.13.0

.PHONY: setup demo test test-integration clean web

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/python -m pip install --quiet "$(TORCH_CPU)"; fi
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/mmfuser-llava demo $(ARGS)

# The chat page on http://127.0.0.1:7860 (the bundled model unless ARGS="--model REPO_OR_FOLDER"); Ctrl-C stops it.
web: setup
	$(BIN)/mmfuser-llava web $(ARGS)

test: setup
	$(BIN)/python -m pytest -n 2 --dist loadfile -q -m "not integration" $(PYTEST_ARGS)

# Integrations in the environments users run them in (other transformers releases, vLLM, lmms-eval, DeepSpeed, FSDP,
# a browser): slower, with venvs of their own cached under $$MMFUSER_LLAVA_CACHE (default ~/.cache/mmfuser-llava).
# One of them: make test-integration PYTEST_ARGS=tests/test_integration_vllm.py
test-integration: setup
	$(BIN)/python -m pytest -q -m integration $(PYTEST_ARGS)

clean:
	rm -rf $(VENV)
