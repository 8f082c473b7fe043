"""The tests' reference fuser (`original_fuser`, written from the original block's equations) reproduces the authors'
own block on both shared fixtures, so the conversion tests compare the port with the original, not with itself."""

from pathlib import Path

import pytest
import torch
from original_fuser import original_fuser, original_fuser_shapes
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import SHARED_FIXTURES

FIXTURES = ("mmfuser_block_small", "mmfuser_block_clip_l336")
PREFIX = "mm_projector.0."


def reference_on_fixture(path: Path, drop: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference fuser's output on the fixture's inputs and weights (`drop`: a weight zeroed), and the expected."""
    metadata = safe_open(str(path), "pt").metadata()
    tensors = load_file(str(path))
    levels, heads = int(metadata["n_levels"]), int(metadata["n_heads"])
    weights = {name[len(PREFIX):]: value.float() for name, value in tensors.items() if name.startswith(PREFIX)}
    shapes = original_fuser_shapes(int(metadata["d_model"]), levels, heads, int(metadata["n_points"]))
    assert {name: tuple(value.shape) for name, value in weights.items()} == shapes  # every original name, no other
    if drop:
        weights[drop] = torch.zeros_like(weights[drop])
    features = [tensors[f"input.features_{level}"].float() for level in range(levels + 1)]
    with torch.no_grad():
        return original_fuser(weights, features[-1], features[:-1], heads), tensors["output.fused"]


@pytest.mark.parametrize("fixture", FIXTURES)
def test_reference_fuser_reproduces_the_original_block(shared_fixtures, fixture):
    fused, expected = reference_on_fixture(shared_fixtures / f"{fixture}.safetensors")
    assert fused.shape == expected.shape
    assert (fused - expected).abs().max() <= 1e-4


@pytest.mark.parametrize("dropped", ["gamma2", "self_attn.sampling_offsets.bias", "cross_attn.attention_weights.bias"])
def test_the_fixture_tells_a_wrong_reference_apart(shared_fixtures, dropped):
    """Guards the check itself: the same reference without the self-attention, the offsets' bias or the attention
    logits' bias no longer matches."""
    fused, expected = reference_on_fixture(shared_fixtures / "mmfuser_block_small.safetensors", drop=dropped)
    assert (fused - expected).abs().max() > 1e-2


if __name__ == "__main__":  # the docs' figures: PYTHONPATH=tests .venv/bin/python tests/test_original_reference.py
    for name in FIXTURES:
        fused, expected = reference_on_fixture(SHARED_FIXTURES / f"{name}.safetensors")
        print(f"{name}: reference fuser vs the authors' block, max abs difference {(fused - expected).abs().max():.2e}")
