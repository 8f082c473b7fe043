"""The original MMFuser block (`MSCrossAttnBlock`) as plain functions of its state dict: the tests' reference fuser.

Written from the block's equations and parameter names (see `/work/shared/reference/original-implementation.md`),
with no code of this package: stock `F.layer_norm`/`F.linear`, and bilinear sampling through torch's `grid_sample`
per level, as Deformable DETR's PyTorch core does (the package gathers with `embedding_bag` instead). Checked against
the authors' own outputs in `../shared/fixtures` (test_original_reference.py), it stands in for the original fuser
wherever the tests emulate the original model.
"""

import math

import torch
import torch.nn.functional as F

LAYER_NORM_EPS = 1e-6  # the original block's three LayerNorms
NORMS = ("query_norm", "feat_norm", "norm1")
ATTENTIONS = ("cross_attn", "self_attn")


def deformable_attention(weights: dict[str, torch.Tensor], name: str, query: torch.Tensor, source: torch.Tensor,
                         heads: int, levels: int) -> torch.Tensor:
    """Deformable DETR's MSDeformAttn `name` of the block: `query` (N, e*e, D) samples `levels` e x e maps of
    `source` (N, levels*e*e, D); the sampling runs in float32 and the result is cast back to the weights' dtype."""
    def linear(part: str, inputs: torch.Tensor) -> torch.Tensor:
        return F.linear(inputs, weights[f"{name}.{part}.weight"], weights[f"{name}.{part}.bias"])

    batch, queries, hidden = query.shape
    side = math.isqrt(queries)
    head_dim = hidden // heads
    points = weights[f"{name}.attention_weights.weight"].shape[0] // (heads * levels)
    value = linear("value_proj", source).float()
    offsets = linear("sampling_offsets", query).float().view(batch, queries, heads, levels, points, 2)
    attention = linear("attention_weights", query).float().view(batch, queries, heads, levels * points)
    attention = attention.softmax(-1).view(batch, queries, heads, levels, points)
    # Reference points: normalized pixel centres in (x, y) order, row-major; offsets are in cells (x / W, y / H).
    centres = (torch.arange(side, dtype=torch.float32) + 0.5) / side
    rows, columns = torch.meshgrid(centres, centres, indexing="ij")
    reference = torch.stack((columns.flatten(), rows.flatten()), -1)
    locations = reference.view(1, queries, 1, 1, 1, 2) + offsets / torch.tensor([side, side], dtype=torch.float32)
    output = torch.zeros(batch, heads, head_dim, queries)
    for level in range(levels):
        level_value = value[:, level * side * side : (level + 1) * side * side]
        level_map = level_value.reshape(batch, side, side, heads, head_dim).permute(0, 3, 4, 1, 2)
        level_map = level_map.reshape(batch * heads, head_dim, side, side)
        grid = (2 * locations[:, :, :, level] - 1).transpose(1, 2).reshape(batch * heads, queries, points, 2)
        samples = F.grid_sample(level_map, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        level_attention = attention[:, :, :, level].transpose(1, 2).reshape(batch * heads, 1, queries, points)
        output += (samples * level_attention).sum(-1).view(batch, heads, head_dim, queries)
    output = output.permute(0, 3, 1, 2).reshape(batch, queries, hidden)
    return linear("output_proj", output.to(weights[f"{name}.output_proj.weight"].dtype))


def original_fuser(weights: dict[str, torch.Tensor], query: torch.Tensor, key_values: list[torch.Tensor],
                   heads: int) -> torch.Tensor:
    """`MSCrossAttnBlock` with state dict `weights` (original names, no prefix): `query` (N, e*e, D) fused with the
    key/value maps (each (N, e*e, D), in level order)."""
    hidden = query.shape[-1]

    def norm(name: str, inputs: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(inputs, (hidden,), weights[f"{name}.weight"], weights[f"{name}.bias"], LAYER_NORM_EPS)

    attended = deformable_attention(weights, "cross_attn", norm("query_norm", query),
                                    norm("feat_norm", torch.cat(key_values, 1)), heads, len(key_values))
    normed = norm("norm1", attended)
    attended = attended + weights["gamma2"] * deformable_attention(weights, "self_attn", normed, normed, heads, 1)
    return query + weights["gamma1"] * attended


def original_fuser_shapes(hidden: int, levels: int, heads: int, points: int) -> dict[str, tuple[int, ...]]:
    """Every parameter of the original block, by its original name, with its shape."""
    shapes = {"gamma1": (hidden,), "gamma2": (hidden,)}
    shapes.update({f"{norm}.{part}": (hidden,) for norm in NORMS for part in ("weight", "bias")})
    for name, name_levels in zip(ATTENTIONS, (levels, 1)):
        for linear, rows in (("sampling_offsets", heads * name_levels * points * 2),
                             ("attention_weights", heads * name_levels * points),
                             ("value_proj", hidden), ("output_proj", hidden)):
            shapes[f"{name}.{linear}.weight"] = (rows, hidden)
            shapes[f"{name}.{linear}.bias"] = (rows,)
    return shapes


def random_original_fuser_weights(hidden: int, levels: int, heads: int, points: int,
                                  generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Seeded weights far from any initialisation: open gates, offsets of a few cells (some samples fall outside the
    map, where zero padding matters), attention logits that are not uniform."""
    weights = {}
    for name, shape in original_fuser_shapes(hidden, levels, heads, points).items():
        noise = torch.randn(shape, generator=generator)
        if name.endswith("norm.weight") or name == "norm1.weight":
            weights[name] = 1 + 0.2 * noise
        elif name.endswith("sampling_offsets.bias"):
            weights[name] = 2 * noise
        elif name.endswith(".weight"):
            weights[name] = noise / hidden**0.5
        else:
            weights[name] = 0.5 * noise
    return weights
