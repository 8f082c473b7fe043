"""Multi-scale deformable attention (Deformable DETR), as MMFuser uses it: every level is a square map of one size.

Hub-facing: imports only torch.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def deformable_sampling(
    value: torch.Tensor, sampling_locations: torch.Tensor, attention_weights: torch.Tensor, grid_size: int
) -> torch.Tensor:
    """Bilinearly sample every level at the given locations and sum the samples with the attention weights.

    All levels share one `grid_size` x `grid_size` map (they are layers of one ViT), so every level and head is
    sampled by a single `grid_sample` call. Zero padding outside the map, `align_corners=False`, as the original.

    Args:
        value: (batch, levels * grid_size**2, heads, head_dim), levels concatenated in order, rows row-major.
        sampling_locations: (batch, queries, heads, levels, points, 2), normalized (x, y) in [0, 1].
        attention_weights: (batch, queries, heads, levels, points), softmaxed over levels * points.

    Returns:
        (batch, queries, heads * head_dim)
    """
    batch, _, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    # (batch, heads, levels, head_dim, grid, grid): one image per (batch, head, level) for grid_sample.
    value_maps = value.view(batch, levels, grid_size, grid_size, heads, head_dim).permute(0, 4, 1, 5, 2, 3)
    value_maps = value_maps.reshape(batch * heads * levels, head_dim, grid_size, grid_size)
    # (batch, heads, levels, queries, points, 2) in grid_sample's [-1, 1] coordinates.
    grids = (2 * sampling_locations - 1).permute(0, 2, 3, 1, 4, 5).reshape(batch * heads * levels, queries, points, 2)
    samples = F.grid_sample(value_maps, grids, mode="bilinear", padding_mode="zeros", align_corners=False)
    # samples: (batch*heads*levels, head_dim, queries, points) -> (batch, heads, head_dim, queries, levels*points)
    samples = samples.view(batch, heads, levels, head_dim, queries, points).permute(0, 1, 3, 4, 2, 5)
    samples = samples.reshape(batch, heads, head_dim, queries, levels * points)
    weights = attention_weights.permute(0, 2, 1, 3, 4).reshape(batch, heads, 1, queries, levels * points)
    output = (samples * weights).sum(-1)  # (batch, heads, head_dim, queries)
    return output.view(batch, heads * head_dim, queries).transpose(1, 2)


def reference_points(grid_size: int, device: torch.device) -> torch.Tensor:
    """Normalized (x, y) centres of a square grid's cells, row-major: shape (grid_size**2, 2), float32."""
    centres = (torch.arange(grid_size, dtype=torch.float32, device=device) + 0.5) / grid_size
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack((x.reshape(-1), y.reshape(-1)), -1)


def sampling_offset_bias(num_heads: int, num_levels: int, num_points: int) -> torch.Tensor:
    """The original offset-bias initialisation: head h looks along angle 2*pi*h/heads, point p at distance p + 1."""
    thetas = torch.arange(num_heads, dtype=torch.float32) * (2.0 * math.pi / num_heads)
    directions = torch.stack([thetas.cos(), thetas.sin()], -1)
    directions = directions / directions.abs().max(-1, keepdim=True)[0]
    distances = torch.arange(1, num_points + 1, dtype=torch.float32).view(1, 1, num_points, 1)
    return (directions.view(num_heads, 1, 1, 2) * distances).expand(num_heads, num_levels, num_points, 2).flatten()


class MMFuserDeformableAttention(nn.Module):
    """Deformable attention of `num_queries` query tokens over `num_levels` square maps of equal size.

    The parameter names are the original ones (`sampling_offsets`, `attention_weights`, `value_proj`, `output_proj`),
    so checkpoints map one to one. The sampling core runs in float32 whatever the module's dtype, as in the original.
    """

    def __init__(self, hidden_size: int, num_levels: int, num_heads: int, num_points: int):
        super().__init__()
        self.num_levels = num_levels
        self.num_heads = num_heads
        self.num_points = num_points
        self.sampling_offsets = nn.Linear(hidden_size, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(hidden_size, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(hidden_size, hidden_size)
        self.output_proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, query: torch.Tensor, keys_values: torch.Tensor, grid_size: int) -> torch.Tensor:
        """query: (batch, grid_size**2, hidden); keys_values: (batch, num_levels * grid_size**2, hidden)."""
        batch, num_queries, hidden_size = query.shape
        value = self.value_proj(keys_values).view(batch, -1, self.num_heads, hidden_size // self.num_heads)
        shape = (batch, num_queries, self.num_heads, self.num_levels, self.num_points)
        offsets = self.sampling_offsets(query).view(*shape, 2)
        weights = self.attention_weights(query).view(batch, num_queries, self.num_heads, -1).softmax(-1).view(shape)
        # Offsets are in cells of each level's map (x by width, y by height); the maps are square.
        locations = reference_points(grid_size, query.device)[None, :, None, None, None] + offsets / grid_size
        output = deformable_sampling(value.float(), locations.float(), weights.float(), grid_size)
        return self.output_proj(output.to(self.output_proj.weight.dtype))


__all__ = ["MMFuserDeformableAttention", "deformable_sampling", "reference_points", "sampling_offset_bias"]
