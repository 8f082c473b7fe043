"""Two CPU processes (torchrun, gloo): the ranks end with the same weights, and the saved model reloads."""

import torch
from safetensors.torch import load_file

from modeling_mmfuser_llava import MMFuserLlavaForConditionalGeneration
from training_support import (  # noqa: F401  (fixtures)
    instructions,
    tiny_checkpoint,
    train_two_processes,
    training_argv,
    weights,
)


def test_two_processes_agree_and_save_a_loadable_model(tmp_path, tiny_checkpoint, instructions):
    output = tmp_path / "ddp"
    argv = training_argv(output, tiny_checkpoint, instructions, "--group_by_modality_length", "True",
                         "--activation_checkpointing", "True", steps=4)
    result = train_two_processes(*argv)
    assert result.returncode == 0, result.stderr[-4000:]
    rank0, rank1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    start = weights(tiny_checkpoint)
    assert set(rank0) == set(rank1) == set(start)
    assert all(torch.equal(rank0[key], rank1[key]) for key in rank0)
    assert any(not torch.equal(rank0[key], start[key]) for key in rank0 if key.startswith("model.fuser."))
    assert "'epoch'" in result.stdout and result.stdout.count("Parameters per part") == 1  # printed by rank 0 only
    saved = MMFuserLlavaForConditionalGeneration.from_pretrained(output)
    assert all(torch.equal(value, rank0[key]) for key, value in saved.state_dict().items())
