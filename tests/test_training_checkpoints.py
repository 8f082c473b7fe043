"""Checkpoints survive kills and full disks (issue 26): a checkpoint appears under its final name only complete,
resuming takes the newest complete one, and a run SIGKILLed at any moment then started again with the same command
ends with the weights of a run never interrupted and one loss per step.

The kills hit a real `mmfuser-llava train` process (tests/kill_during_training.py, the fault hook); the 2-process
and DeepSpeed variants are in tests/test_integration_kill.py.
"""

import errno
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import modeling_mmfuser_llava.training.model_setup as model_setup
from modeling_mmfuser_llava.cli import main as cli_main
from modeling_mmfuser_llava.training.checkpoints import STAGING_DIR, SaveError, incomplete_reason
from training_support import instructions, tiny_checkpoint, train, training_argv  # noqa: F401  (fixtures)

KILL_HOOK = Path(__file__).with_name("kill_during_training.py")
STEPS = 8
CHECKPOINTING = ("--save_strategy", "steps", "--save_steps", "3", "--report_to", "none")


def checkpointing_argv(output_dir: Path, model: Path, data: Path, steps: int = STEPS) -> list[str]:
    return training_argv(output_dir, model, data, *CHECKPOINTING, steps=steps)


def logged_steps(output_dir: Path) -> list[int]:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [entry["step"] for entry in history if "loss" in entry]


def assert_same_weights(reference: Path, resumed: Path) -> None:
    expected, found = load_file(reference / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert expected.keys() == found.keys()
    for key in expected:
        torch.testing.assert_close(found[key], expected[key], rtol=0, atol=1e-6, msg=key)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_incomplete_checkpoints_are_told_apart(tmp_path, tiny_checkpoint, instructions):
    """Each way a save cut short leaves a checkpoint is named; the newest complete one is resumed from, and each
    newer one skipped is logged with its reason."""
    output = tmp_path / "out"
    train(*checkpointing_argv(output, tiny_checkpoint, instructions, steps=6))
    complete = output / "checkpoint-6"
    assert incomplete_reason(complete) is None and not (output / STAGING_DIR).exists()
    cases = {
        "checkpoint-7": ("model.safetensors", "model.safetensors is truncated"),
        "checkpoint-8": ("optimizer.pt", "optimizer.pt is truncated"),
        "checkpoint-9": ("trainer_state.json", "no trainer_state.json"),
    }
    for name, (damaged, reason) in cases.items():
        (output / name).mkdir()
        for file in complete.iterdir():
            (output / name / file.name).write_bytes(file.read_bytes())
        if damaged == "trainer_state.json":
            (output / name / damaged).unlink()
        else:
            truncate(output / name / damaged)
        assert reason in incomplete_reason(output / name)
    with pytest.raises(ValueError, match="checkpoint-9: no trainer_state.json"):
        train(*checkpointing_argv(output, tiny_checkpoint, instructions, steps=9),
              "--resume_from_checkpoint", str(output / "checkpoint-9"))


def test_resume_skips_a_checkpoint_whose_save_was_cut_short(tmp_path, tiny_checkpoint, instructions, caplog):
    """The issue's case: a later checkpoint with a truncated model.safetensors and no trainer_state.json stopped the
    next run with `SafetensorError: ... invalid header length`."""
    output = tmp_path / "out"
    train(*checkpointing_argv(output, tiny_checkpoint, instructions, steps=6))
    broken = output / "checkpoint-9"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes((output / "checkpoint-6" / "model.safetensors").read_bytes())
    truncate(broken / "model.safetensors")
    with caplog.at_level(logging.WARNING):
        train(*checkpointing_argv(output, tiny_checkpoint, instructions, steps=9))
    assert f"skipping {broken}: no trainer_state.json" in caplog.text
    assert f"resuming from {output / 'checkpoint-6'}" in caplog.text
    assert logged_steps(output) == list(range(1, 10))


def test_a_full_disk_names_the_folder_and_keeps_the_previous_checkpoint(tmp_path, tiny_checkpoint, instructions,
                                                                          monkeypatch):
    output = tmp_path / "out"
    real_save = torch.save

    def disk_full_in_checkpoint_6(obj, file, *args, **kwargs):
        if "checkpoint-6" in str(file):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
        return real_save(obj, file, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_in_checkpoint_6)
    with pytest.raises(SaveError, match=rf"could not write {output / 'checkpoint-6'}: OSError: .*No space left on "
                       rf"device.*{output / 'checkpoint-3'} is intact"):
        train(*checkpointing_argv(output, tiny_checkpoint, instructions, steps=9))
    assert sorted(path.name for path in output.iterdir() if path.is_dir()) == ["checkpoint-3"]
    assert incomplete_reason(output / "checkpoint-3") is None
    monkeypatch.setattr(torch, "save", real_save)
    train(*checkpointing_argv(output, tiny_checkpoint, instructions, steps=9))  # the same command resumes
    assert logged_steps(output) == list(range(1, 10))


def test_stage1_adapter_file_is_never_left_truncated(tmp_path, tiny_pristine, monkeypatch):
    model = tiny_pristine[0]
    path = model_setup.save_mm_adapter(model.state_dict(), tmp_path / model_setup.MM_PROJECTOR_FILE)
    before = path.read_bytes()

    def write_half_then_fail(tensors, filename, metadata=None):
        Path(filename).write_bytes(before[: len(before) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    monkeypatch.setattr(model_setup, "save_file", write_half_then_fail)
    with pytest.raises(OSError):
        model_setup.save_mm_adapter(model.state_dict(), path)
    assert path.read_bytes() == before and [file.name for file in tmp_path.iterdir()] == [path.name]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_checkpoint, instructions) -> Path:
    output = tmp_path_factory.mktemp("uninterrupted") / "out"
    train(*checkpointing_argv(output, tiny_checkpoint, instructions))
    return output


@pytest.mark.parametrize("moment", ["step:4", "save:6", "final"], ids=["between-steps", "mid-checkpoint", "final-save"])
def test_a_run_killed_and_started_again_ends_as_if_never_interrupted(tmp_path, tiny_checkpoint, instructions,
                                                                     uninterrupted, moment):
    """SIGKILL between two steps, while a checkpoint's weights are half written, or while the final output's are;
    the same command again: the weights of the uninterrupted run (1e-6) and one loss per step."""
    output = tmp_path / "out"
    argv = checkpointing_argv(output, tiny_checkpoint, instructions)
    killed = subprocess.run([sys.executable, str(KILL_HOOK), *argv], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "KILL_AT": moment, "OMP_NUM_THREADS": "1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert all(incomplete_reason(folder) is None for folder in output.glob("checkpoint-*"))
    assert cli_main(["train", *argv]) == 0
    assert_same_weights(uninterrupted, output)
    assert logged_steps(output) == logged_steps(uninterrupted) == list(range(1, STEPS + 1))
    assert not (output / STAGING_DIR).exists()
