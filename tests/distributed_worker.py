"""One process of the multi-process training test: `run_training` (what `mmfuser-llava train` runs), then this
process's trained weights written to `<output_dir>/../rank<N>.safetensors` for the test to compare."""

import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from modeling_mmfuser_llava.training import parse_arguments, run_training
from training_support import BUILDS_VARIABLE, JSON_LOAD_VARIABLE, mark_cache_builds, use_json_load

torch.set_num_threads(1)
if os.environ.get(JSON_LOAD_VARIABLE):
    use_json_load(pytest.MonkeyPatch())
if os.environ.get(BUILDS_VARIABLE):
    mark_cache_builds(pytest.MonkeyPatch(), Path(os.environ[BUILDS_VARIABLE]) / f"built-by-rank{os.environ['RANK']}")
trainer = run_training(*parse_arguments(sys.argv[1:]))
state = {key: value.contiguous() for key, value in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()}
save_file(state, Path(trainer.args.output_dir).parent / f"rank{trainer.args.process_index}.safetensors")
