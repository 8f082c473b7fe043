"""(a) the fuser against its linear layers alone; (b) the fast sampling core against the per-level reference."""

import copy

import torch

from modeling_mmfuser_llava.deformable_attention import deformable_sampling
from modeling_mmfuser_llava.fuser import MMFuserBlock

from .configs import REAL, Sizes, model_configs
from .reference import per_level_deformable_sampling, use_per_level_core
from .timing import Result, interleaved_times


def clip_l336_fuser(dtype: torch.dtype, seed: int = 0, sizes: Sizes = REAL) -> MMFuserBlock:
    """The fuser at CLIP-L/336 sizes (or `sizes`') with every parameter moved off its initial value (open gates, real
    offsets)."""
    torch.manual_seed(seed)
    fuser = MMFuserBlock(model_configs(sizes)[0])
    with torch.no_grad():
        for parameter in fuser.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    return fuser.to(dtype).eval()


def fuser_inputs(
    fuser: MMFuserBlock, batch: int, dtype: torch.dtype, device: str = "cpu"
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    hidden = fuser.query_norm.normalized_shape[0]
    levels = fuser.cross_attn.num_levels
    maps = torch.randn(levels + 1, batch, fuser.grid_size**2, hidden, generator=torch.Generator().manual_seed(0))
    query, *keys_values = maps.to(device, dtype).unbind(0)
    return query, keys_values


def linear_layers_alone(fuser: MMFuserBlock, query: torch.Tensor, keys_values: list[torch.Tensor]) -> None:
    """Every Linear of the block on inputs of the shapes it sees in the block: the floor the block cannot beat."""
    keys_values = torch.cat(keys_values, 1)
    for attention, values_input in ((fuser.cross_attn, keys_values), (fuser.self_attn, query)):
        attention.value_proj(values_input)
        attention.sampling_offsets(query)
        attention.attention_weights(query)
        attention.output_proj(query)


def cross_attention_core_inputs(fuser: MMFuserBlock, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float32 core inputs of the cross-attention's shapes: locations spread over the map and a little beyond."""
    attention = fuser.cross_attn
    heads, levels, points, tokens = attention.num_heads, attention.num_levels, attention.num_points, fuser.grid_size**2
    head_dim = attention.value_proj.out_features // heads
    generator = torch.Generator().manual_seed(0)
    value = torch.randn(batch, levels * tokens, heads, head_dim, generator=generator)
    locations = torch.rand(batch, tokens, heads, levels, points, 2, generator=generator) * 1.2 - 0.1
    weights = torch.rand(batch, tokens, heads, levels * points, generator=generator).softmax(-1)
    return value, locations, weights.view(batch, tokens, heads, levels, points)


def measure_fuser(dtype: torch.dtype, batch: int, rounds: int) -> list[Result]:
    fuser = clip_l336_fuser(dtype)
    reference = copy.deepcopy(fuser)
    for attention in (reference.cross_attn, reference.self_attn):
        use_per_level_core(attention)
    query, keys_values = fuser_inputs(fuser, batch, dtype)
    core_inputs = cross_attention_core_inputs(fuser, batch)
    grid = fuser.grid_size
    candidates = {
        "fuser": lambda: fuser(query, keys_values),
        "linears": lambda: linear_layers_alone(fuser, query, keys_values),
        "per-level fuser": lambda: reference(query, keys_values),
    }
    if dtype == torch.float32:  # the core gets float32 inputs in every model: a bfloat16 column would time the same
        candidates["core"] = lambda: deformable_sampling(*core_inputs, grid)
        candidates["per-level core"] = lambda: per_level_deformable_sampling(*core_inputs, grid)
    with torch.inference_mode():
        times = interleaved_times(candidates, rounds)
    setting = f"{str(dtype).removeprefix('torch.')}, batch {batch}"
    results = [
        times.result("(a) fuser / its linear layers alone", setting, "fuser", "linears", "<= 1.5"),
        times.result(
            "(b) fuser / fuser with the per-level grid_sample core", setting, "fuser", "per-level fuser", "report"
        ),
    ]
    if dtype == torch.float32:
        results.append(
            times.result(
                "(b) sampling core / per-level grid_sample core (cross-attention)",
                f"float32 (the core's dtype in every model), batch {batch}", "core", "per-level core", "report",
            )
        )
    return results
