"""Multi-scale deformable attention (Deformable DETR), as MMFuser uses it: every level is a square map of one size.

Hub-facing: imports only torch and transformers.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.integrations import use_kernel_forward_from_hub


class WeightedGather(torch.autograd.Function):
    """`embedding_bag(rows, table, per_sample_weights=weights, mode="sum")` with a backward that costs what its forward
    does: the table's gradient is the transposed gather (entries sorted by row, one `embedding_bag` over the output
    gradient) instead of the generic dense backward, which scatters every entry's row one at a time.

    Both gradients are `embedding_bag`'s own: the table's sums the same terms, the weights' comes from the same aten
    kernel. Every shape is static (no `bincount`), so `torch.compile` captures it in one graph.
    """

    @staticmethod
    def forward(table: torch.Tensor, rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """table: (table rows, dim); rows: (bags, entries), int32 or int64; weights: (bags, entries)."""
        return F.embedding_bag(rows, table, per_sample_weights=weights, mode="sum")

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        table, rows, weights = inputs
        ctx.save_for_backward(table, rows, weights)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, None, torch.Tensor | None]:
        table, rows, weights = ctx.saved_tensors
        bags, entries = rows.shape
        grad_table = grad_weights = None
        if ctx.needs_input_grad[0]:
            # A stable sort: each table row sums its entries in bag order, as embedding_bag's own backward does.
            sorted_rows, order = rows.flatten().sort(stable=True)
            table_rows = torch.arange(table.shape[0], dtype=rows.dtype, device=rows.device)
            grad_table = F.embedding_bag(
                order // entries, grad_output, torch.searchsorted(sorted_rows, table_rows),
                per_sample_weights=weights.flatten()[order], mode="sum",
            )
        if ctx.needs_input_grad[2]:
            entry_bags = torch.arange(bags, device=rows.device).repeat_interleave(entries)
            offsets = torch.arange(0, bags * entries, entries, device=rows.device)
            grad_weights = torch.ops.aten._embedding_bag_per_sample_weights_backward(
                grad_output, table, rows.flatten(), offsets, entry_bags, 0, -1
            ).view(bags, entries)
        return grad_table, None, grad_weights


def deformable_sampling(
    value: torch.Tensor, sampling_locations: torch.Tensor, attention_weights: torch.Tensor, grid_size: int
) -> torch.Tensor:
    """Bilinearly sample every level at the given locations and sum the samples with the attention weights.

    The math of the original per-level `grid_sample` (bilinear, zero padding outside the map, `align_corners=False`)
    done as one weighted gather: every (query, head) is a bag of 4 * levels * points rows of `value` (a 2x2
    neighbourhood per sample), summed by `embedding_bag` with weight = attention weight * bilinear weight. Unlike
    `grid_sample` it reads whole contiguous head vectors and builds no (samples x head_dim) intermediate; it runs on
    any device and is differentiable in all three inputs.

    Args:
        value: (batch, levels * grid_size**2, heads, head_dim), levels concatenated in order, rows row-major.
        sampling_locations: (batch, queries, heads, levels, points, 2), normalized (x, y); may lie outside [0, 1].
        attention_weights: (batch, queries, heads, levels, points), softmaxed over levels * points.

    Returns:
        (batch, queries, heads * head_dim)
    """
    if grid_size < 2:
        raise ValueError(f"deformable sampling needs maps of at least 2x2 patches, got {grid_size}x{grid_size}")
    batch, _, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    index_dtype = torch.int32 if value.numel() // head_dim < 2**31 else torch.int64
    # Pixel coordinates (align_corners=False) and the corner of a 2x2 neighbourhood kept inside the map. The tent
    # weights max(0, 1 - |pixel - neighbour|) are the bilinear weights of the true neighbours and 0 for any other
    # pixel, so a sample near or beyond the border gets exactly the zero padding of grid_sample, gradients included.
    pixels = sampling_locations * grid_size - 0.5
    corner = pixels.detach().floor().clamp_(0, grid_size - 2)
    offset = pixels - corner  # in [-inf, inf]; in [0, 1) for a sample inside the map
    lower_weight = torch.minimum(1 + offset, 1 - offset).clamp_(min=0)
    upper_weight = torch.minimum(offset, 2 - offset).clamp_(min=0)
    x, y = corner.to(index_dtype).unbind(-1)
    (weight_x0, weight_y0), (weight_x1, weight_y1) = lower_weight.unbind(-1), upper_weight.unbind(-1)
    # Row of `value` as (-1, head_dim): ((image * levels + level) * grid_size**2 + y * grid_size + x) * heads + head
    arange = torch.arange(max(batch, levels, heads, 2), dtype=index_dtype, device=value.device)
    map_rows = (arange[:batch].view(batch, 1, 1, 1, 1) * levels + arange[:levels].view(levels, 1)) * grid_size**2
    first_rows = map_rows * heads + arange[:heads].view(heads, 1, 1)
    top_left = (y * (grid_size * heads) + first_rows + x * heads).view(-1, 1, levels * points)
    # Each bag: the neighbourhood's corners (top-left, top-right, bottom-left, bottom-right), each over levels * points.
    corner_rows = (arange[:2].view(2, 1) * grid_size + arange[:2]) * heads  # built on the device: no host copy
    rows = top_left + corner_rows.view(1, 4, 1)
    top, bottom = attention_weights * weight_y0, attention_weights * weight_y1
    corner_weights = [top * weight_x0, top * weight_x1, bottom * weight_x0, bottom * weight_x1]
    weights = torch.stack(corner_weights, -3).view(-1, 4, levels * points)
    output = WeightedGather.apply(value.reshape(-1, head_dim), rows.flatten(1), weights.flatten(1))
    return output.view(batch, queries, heads * head_dim)


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


@use_kernel_forward_from_hub("MultiScaleDeformableAttention")
class DeformableSampling(nn.Module):
    """The sampling core as a stateless layer with the forward signature of Deformable DETR's
    `MultiScaleDeformableAttention` in transformers.

    That makes it a kernels-hub layer of the same name: `from_pretrained(..., use_kernels=True)` on CUDA replaces this
    forward with the compiled CUDA kernel of `kernels-community/deformable-detr` (the same math, float32); elsewhere,
    or without the `kernels` package, `deformable_sampling` runs. Every level must be the same square map.
    """

    def forward(
        self,
        value: torch.Tensor,
        value_spatial_shapes: torch.Tensor,
        value_spatial_shapes_list: list[tuple[int, int]],
        level_start_index: torch.Tensor,
        sampling_locations: torch.Tensor,
        attention_weights: torch.Tensor,
        im2col_step: int,
    ) -> torch.Tensor:
        return deformable_sampling(value, sampling_locations, attention_weights, value_spatial_shapes_list[0][0])


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
        self.sampling = DeformableSampling()

    def forward(self, query: torch.Tensor, keys_values: torch.Tensor, grid_size: int) -> torch.Tensor:
        """query: (batch, grid_size**2, hidden); keys_values: (batch, num_levels * grid_size**2, hidden)."""
        batch, num_queries, hidden_size = query.shape
        value = self.value_proj(keys_values).view(batch, -1, self.num_heads, hidden_size // self.num_heads)
        shape = (batch, num_queries, self.num_heads, self.num_levels, self.num_points)
        offsets = self.sampling_offsets(query).view(*shape, 2)
        weights = self.attention_weights(query).view(batch, num_queries, self.num_heads, -1).softmax(-1).view(shape)
        # Offsets are in cells of each level's map (x by width, y by height); the maps are square.
        locations = reference_points(grid_size, query.device)[None, :, None, None, None] + offsets / grid_size
        # The level layout in the form the kernels-hub CUDA kernel takes (the default core needs only grid_size).
        shapes = [(grid_size, grid_size)] * self.num_levels
        spatial_shapes = torch.full((self.num_levels, 2), grid_size, dtype=torch.long, device=query.device)
        level_starts = torch.arange(self.num_levels, device=query.device) * grid_size**2
        # im2col_step = batch: the CUDA kernel needs the batch to be a multiple of it.
        output = self.sampling(
            value.float(), spatial_shapes, shapes, level_starts, locations.float(), weights.float(), batch
        )
        return self.output_proj(output.to(self.output_proj.weight.dtype))


__all__ = [
    "DeformableSampling",
    "MMFuserDeformableAttention",
    "deformable_sampling",
    "reference_points",
    "sampling_offset_bias",
]
