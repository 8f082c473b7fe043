"""(a) the fuser against its linear layers alone; (b) the fast sampling core against the per-level reference."""

import torch

from modeling_mmfuser_llava.fuser import MMFuserBlock

from .reference import per_level_deformable_sampling


def fuser_inputs(fuser: MMFuserBlock, batch: int, dtype: torch.dtype) -> tuple[torch.Tensor, list[torch.Tensor]]:
    hidden = fuser.query_norm.normalized_shape[0]
    tokens = fuser.grid_size**2
    levels = fuser.cross_attn.num_levels
    query, *keys_values = torch.randn(levels + 1, batch, tokens, hidden, dtype=dtype).unbind(0)
    return query, keys_values


def linear_layers_alone(fuser: MMFuserBlock, query: torch.Tensor, keys_values: list[torch.Tensor]) -> None:
    """Every Linear of the block on inputs of the shapes it sees in the block: the floor the block cannot beat."""
    keys_values = torch.cat(keys_values, 1)
    for attention, values_input in ((fuser.cross_attn, keys_values), (fuser.self_attn, query)):
        attention.value_proj(values_input)
        attention.sampling_offsets(query)
        attention.attention_weights(query)
        attention.output_proj(query)


def use_reference_core(fuser: MMFuserBlock) -> None:
    """Swap the fast core of both attentions for the per-level grid_sample reference (same math)."""
    for attention in (fuser.cross_attn, fuser.self_attn):
        attention.sampling.forward = lambda value, shapes, shape_list, starts, locations, weights, step: (
            per_level_deformable_sampling(value, locations, weights, shape_list[0][0])
        )
