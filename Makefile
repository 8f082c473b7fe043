# Entry points, each setting up the virtual environment first: `make demo`, `make web`, `make test` (and the slower
# `make test-integration`).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# PyTorch's CPU wheel (the machine's local file where present); a GPU machine takes the default CUDA build instead.
TORCH_CPU ?= torch==2.13.0

.PHONY: setup demo test test-integration clean web gpu-wheels gpu-check

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

# The wheels a lent GPU machine lacks (docs/performance.md, "The GPU check"), for its Python 3.12 on x86-64 Linux, into
# $(GPU_WHEELS) (git-ignored; the device tool's `carry` takes it, 64 MiB in all with the working tree).
GPU_WHEELS ?= gpu-wheels
GPU_WHEEL_PINS ?= bitsandbytes==0.50.2 peft==0.21.2
DEVICE_PLATFORM := --python-version 3.12 --implementation cp --only-binary=:all: --platform manylinux_2_28_x86_64 \
	--platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform any

gpu-wheels: setup
	rm -rf $(GPU_WHEELS).partial && mkdir -p $(GPU_WHEELS).partial
	$(BIN)/python -m pip download --quiet --no-deps $(DEVICE_PLATFORM) -d $(GPU_WHEELS).partial $(GPU_WHEEL_PINS)
	$(BIN)/python -m pip wheel --quiet --no-deps -w $(GPU_WHEELS).partial .
	rm -rf $(GPU_WHEELS) && mv $(GPU_WHEELS).partial $(GPU_WHEELS)
	du -cb $(GPU_WHEELS)/*.whl

# On a CUDA machine, with its own python3 (torch there): the wheels above, the CUDA tests, the GPU benchmark rows, one
# table (under $$OUT where set). DRY_RUN=1: every step that needs no GPU, on this machine.
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)

gpu-check:
	PYTHONUNBUFFERED=1 $(GPU_PYTHON) -m benchmarks.gpu_check --wheels $(GPU_WHEELS) $(if $(DRY_RUN),--dry-run)

clean:
	rm -rf $(VENV)
