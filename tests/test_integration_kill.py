"""A 2-process run (DDP, DeepSpeed ZeRO-2; torchrun, gloo, CPU) SIGKILLed mid-checkpoint or during its final save,
then started again with the same command: the weights of a run never interrupted (1e-6) and one loss per step.

The main process is killed while it writes the model's weights (tests/kill_during_training.py); torchrun then stops
the other. Under DDP the other process has already written its RNG state into the staged checkpoint, under ZeRO-2 its
optimizer partition: the rename waits for every process, so the half-written checkpoint is never resumed from.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from isolated_venv import cache_root
from modeling_mmfuser_llava.training.checkpoints import STAGING_DIR, incomplete_reason
from training_support import instructions, tiny_checkpoint, training_argv  # noqa: F401  (fixtures)

pytestmark = pytest.mark.integration

KILL_HOOK = Path(__file__).with_name("kill_during_training.py")
CLI = Path(sys.executable).with_name("mmfuser-llava")
ZERO2 = Path(__file__).resolve().parents[1] / "configs" / "deepspeed" / "zero2.json"
STEPS = 8


def torchrun(program: Path, argv: list[str], kill_at: str | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_EXTENSIONS_DIR": str(cache_root() / "torch_extensions")}
    if kill_at is not None:
        environment["KILL_AT"] = kill_at
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(program)]
    if program == CLI:
        command.append("train")
    return subprocess.run([*command, *argv], env=environment, capture_output=True, text=True, timeout=900,
                          stdin=subprocess.DEVNULL)


def logged_steps(output_dir: Path) -> list[int]:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [entry["step"] for entry in history if "loss" in entry]


@pytest.mark.parametrize("engine, moments", [("ddp", ["save:6", "final"]), ("deepspeed-zero2", ["save:6"])])
def test_two_processes_killed_and_started_again_end_as_if_never_interrupted(tmp_path, tiny_checkpoint, instructions,
                                                                            engine, moments):
    flags = ["--save_strategy", "steps", "--save_steps", "3", "--report_to", "none", "--ddp_backend", "gloo",
             "--per_device_train_batch_size", "1"]
    if engine == "deepspeed-zero2":
        flags += ["--deepspeed", str(ZERO2)]

    def argv(output: Path) -> list[str]:
        return training_argv(output, tiny_checkpoint, instructions, *flags, steps=STEPS)

    reference = torchrun(CLI, argv(tmp_path / "uninterrupted"))
    assert reference.returncode == 0, reference.stderr[-6000:]
    expected = load_file(tmp_path / "uninterrupted" / "model.safetensors")
    for moment in moments:
        output = tmp_path / moment.replace(":", "-")
        killed = torchrun(KILL_HOOK, argv(output), kill_at=moment)
        assert killed.returncode != 0 and "SIGKILL" in killed.stderr, killed.stderr[-6000:]
        assert all(incomplete_reason(folder) is None for folder in output.glob("checkpoint-*"))
        again = torchrun(CLI, argv(output))
        assert again.returncode == 0, again.stderr[-6000:]
        found = load_file(output / "model.safetensors")
        assert found.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(found[key], expected[key], rtol=0, atol=1e-6, msg=f"{moment}: {key}")
        assert logged_steps(output) == list(range(1, STEPS + 1)), moment
        assert not (output / STAGING_DIR).exists()
