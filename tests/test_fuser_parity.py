"""The fuser reproduces the authors' MSCrossAttnBlock (reference outputs in the fixtures) and its initialisation."""

import functools
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from modeling_mmfuser_llava import MMFuserLlavaConfig
from modeling_mmfuser_llava.fuser import MMFuserBlock

from conftest import REPO_ROOT, SHARED_FIXTURES, assert_original_initialisation

SMALL_FIXTURE = Path(__file__).parent / "data" / "mmfuser_block_small.safetensors"


def block_for_fixture(path: Path) -> tuple[MMFuserBlock, list[torch.Tensor], torch.Tensor]:
    """An MMFuserBlock with the fixture's sizes and weights, the fixture's inputs and its expected output."""
    metadata = safe_open(str(path), "pt").metadata()
    tensors = load_file(str(path))
    hidden, levels, heads, points = (int(metadata[key]) for key in ("d_model", "n_levels", "n_heads", "n_points"))
    grid = int(metadata["grid"].split("x")[0])
    config = MMFuserLlavaConfig(
        vision_config=dict(
            model_type="clip_vision_model", hidden_size=hidden, intermediate_size=hidden, num_hidden_layers=levels + 1,
            num_attention_heads=1, image_size=grid * 2, patch_size=2,
        ),
        text_config=dict(model_type="llama", hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=1, vocab_size=8),
        vision_feature_layer=-1, fuser_key_value_layers=tuple(range(1, levels + 1)), fuser_num_heads=heads,
        fuser_num_points=points, image_seq_length=grid * grid,
    )
    block = MMFuserBlock(config)
    prefix = "mm_projector.0."
    block.load_state_dict({k[len(prefix):]: v.float() for k, v in tensors.items() if k.startswith(prefix)}, strict=True)
    features = [tensors[f"input.features_{level}"].float() for level in range(levels + 1)]
    return block.eval(), features, tensors["output.fused"]


@functools.cache
def max_abs_diff_to_fixture(path: Path) -> float:
    block, features, expected = block_for_fixture(path)
    with torch.no_grad():
        fused = block(features[-1], features[:-1])
    assert fused.shape == expected.shape
    return (fused - expected).abs().max().item()


def test_small_fixture_parity():
    assert max_abs_diff_to_fixture(SMALL_FIXTURE) <= 1e-4


def test_clip_l336_fixture_parity(shared_fixtures):
    assert max_abs_diff_to_fixture(shared_fixtures / "mmfuser_block_clip_l336.safetensors") <= 1e-4


def test_docs_quote_the_measured_differences(shared_fixtures):
    """The model page's parity figures must be what the fuser gives (within a factor of 2, for other CPUs' float32)."""
    page = " ".join((REPO_ROOT / "docs" / "model.md").read_text().split())
    quoted = re.search(r"max abs difference of (\S+) \(small fixture\) and (\S+) \(CLIP-L/336 size\)", page)
    assert quoted, "docs/model.md no longer quotes the parity figures in the expected words"
    for figure, fixture in zip(quoted.groups(), ("mmfuser_block_small", "mmfuser_block_clip_l336")):
        measured = max_abs_diff_to_fixture(shared_fixtures / f"{fixture}.safetensors")
        assert float(figure) / 2 <= measured <= 2 * float(figure), (fixture, figure, measured)


def test_fixture_outputs_depend_on_every_part():
    """Guards the parity test itself: dropping the self-attention or the gates must break the match."""
    block, features, expected = block_for_fixture(SMALL_FIXTURE)
    with torch.no_grad():
        block.gamma2.zero_()
        assert (block(features[-1], features[:-1]) - expected).abs().max() > 1e-2
        block.gamma1.zero_()
        assert torch.equal(block(features[-1], features[:-1]), features[-1])


def test_bfloat16_block_samples_in_float32():
    """Under bf16 the sampling core still runs in float32 (the original casts), so bf16 stays close to float32."""
    block, features, expected = block_for_fixture(SMALL_FIXTURE)
    seen = []
    block = block.to(torch.bfloat16)
    for attention in (block.cross_attn, block.self_attn):
        attention.sampling.register_forward_pre_hook(
            lambda module, inputs: seen.extend(inputs[i].dtype for i in (0, 4, 5))  # value, locations, weights
        )
    with torch.no_grad():
        fused = block(features[-1].bfloat16(), [f.bfloat16() for f in features[:-1]])
    assert len(seen) == 6 and set(seen) == {torch.float32}
    assert fused.dtype == torch.bfloat16
    relative = (fused.float() - expected).norm() / expected.norm()
    assert relative < 2e-2


def test_initialisation_matches_original(tiny_pristine):
    assert_original_initialisation(tiny_pristine[0].model.fuser)


if __name__ == "__main__":  # the parity figures of docs/model.md: PYTHONPATH=. python tests/test_fuser_parity.py
    for fixture in ("mmfuser_block_small", "mmfuser_block_clip_l336"):
        difference = max_abs_diff_to_fixture(SHARED_FIXTURES / f"{fixture}.safetensors")
        print(f"{fixture}: max abs difference {difference:.2e} (float32)")
