"""The straightforward form of the deformable sampling core: one `grid_sample` per level, as Deformable DETR's
PyTorch path computes it. The fast core (`deformable_sampling`) must equal it; tests and benchmarks compare the two."""

import torch
import torch.nn.functional as F

from modeling_mmfuser_llava.deformable_attention import MMFuserDeformableAttention


def per_level_deformable_sampling(
    value: torch.Tensor, sampling_locations: torch.Tensor, attention_weights: torch.Tensor, grid_size: int
) -> torch.Tensor:
    """Same arguments and result as `modeling_mmfuser_llava.deformable_attention.deformable_sampling`."""
    batch, _, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    grids = 2 * sampling_locations - 1  # grid_sample's [-1, 1] coordinates
    samples = []
    for level, level_value in enumerate(value.split(grid_size * grid_size, dim=1)):
        # (batch, tokens, heads, head_dim) -> one (head_dim, grid, grid) image per (image, head)
        image = level_value.permute(0, 2, 3, 1).reshape(batch * heads, head_dim, grid_size, grid_size)
        grid = grids[:, :, :, level].transpose(1, 2).reshape(batch * heads, queries, points, 2)
        samples.append(F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    # (batch * heads, head_dim, queries, levels * points), weighted and summed over the samples
    samples = torch.stack(samples, dim=-2).flatten(-2)
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
    output = (samples * weights).sum(-1).view(batch, heads * head_dim, queries)
    return output.transpose(1, 2)


def use_per_level_core(attention: MMFuserDeformableAttention) -> None:
    """Make `attention` sample with `per_level_deformable_sampling` instead of its fast core."""
    attention.sampling.forward = lambda value, shapes, shape_list, starts, locations, weights, step: (
        per_level_deformable_sampling(value, locations, weights, shape_list[0][0])
    )
