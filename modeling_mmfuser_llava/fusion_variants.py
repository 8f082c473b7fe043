"""The paper's alternatives to the default fuser, chosen by `fuser_fusion` and `fuser_attention_type`.

- The single-layer baseline (`"none"`: the query layer alone, LLaVA-1.5 itself).
- Table I's simple fusions of the selected layers (key/value layers, then the query layer): channel concatenation,
  average, learnable weighted average.
- Table VII's attention types inside the MMFuser block: global multi-head attention and PVTv2's linear
  spatial-reduction attention (SRA), in place of the deformable attention. The block keeps its structure, zero gates
  and parameter names (`cross_attn`, `self_attn`, `gamma1`, ...), and the attentions keep `value_proj`/`output_proj`.

Every fuser takes `(query, keys_values)` as `MMFuserBlock` does, so the model calls them all alike.

Hub-facing: imports only torch, transformers and the project's other Hub files.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from .configuration_mmfuser_llava import MMFuserLlavaConfig
from .fuser import MMFuserBlock


class MMFuserGlobalAttention(nn.Module):
    """Multi-head attention of every query token over every key/value token (quadratic in the token count).

    No positional embedding is added, as in the deformable block: CLIP's hidden states already carry its own.
    """

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.query_proj = nn.Linear(hidden_size, hidden_size)
        self.key_proj = nn.Linear(hidden_size, hidden_size)
        self.value_proj = nn.Linear(hidden_size, hidden_size)
        self.output_proj = nn.Linear(hidden_size, hidden_size)

    def reduce_keys_values(self, keys_values: torch.Tensor, grid_size: int) -> torch.Tensor:
        """The key/value tokens attended to: all of them."""
        return keys_values

    def forward(self, query: torch.Tensor, keys_values: torch.Tensor, grid_size: int) -> torch.Tensor:
        """query: (batch, queries, hidden); keys_values: (batch, levels * grid_size**2, hidden)."""
        keys_values = self.reduce_keys_values(keys_values, grid_size)
        batch, num_queries, hidden_size = query.shape

        def heads(states: torch.Tensor) -> torch.Tensor:
            return states.view(batch, -1, self.num_heads, hidden_size // self.num_heads).transpose(1, 2)

        attended = F.scaled_dot_product_attention(
            heads(self.query_proj(query)), heads(self.key_proj(keys_values)), heads(self.value_proj(keys_values))
        )
        return self.output_proj(attended.transpose(1, 2).reshape(batch, num_queries, hidden_size))

    def projections(self) -> list[nn.Linear]:
        """The linear maps that `init_fusion_variant_weights` initialises Xavier-uniform with zero bias."""
        return [self.query_proj, self.key_proj, self.value_proj, self.output_proj]


class MMFuserLinearSRAttention(MMFuserGlobalAttention):
    """PVTv2's linear SRA: each key/value layer is average-pooled to `pool_size` x `pool_size` tokens, then passed
    through a linear map (PVTv2's 1x1 convolution), LayerNorm and GELU, before global attention. The cost is linear in
    the number of queries: each attends to `levels * pool_size**2` tokens whatever the image size.
    """

    def __init__(self, hidden_size: int, num_heads: int, pool_size: int, layer_norm_eps: float):
        super().__init__(hidden_size, num_heads)
        self.pool_size = pool_size
        self.reduction = nn.Linear(hidden_size, hidden_size)
        self.reduction_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def reduce_keys_values(self, keys_values: torch.Tensor, grid_size: int) -> torch.Tensor:
        batch, tokens, hidden_size = keys_values.shape
        maps = keys_values.view(batch * tokens // grid_size**2, grid_size, grid_size, hidden_size).permute(0, 3, 1, 2)
        pooled = F.adaptive_avg_pool2d(maps, self.pool_size).flatten(2).transpose(1, 2)
        return F.gelu(self.reduction_norm(self.reduction(pooled.reshape(batch, -1, hidden_size))))

    def projections(self) -> list[nn.Linear]:
        return [*super().projections(), self.reduction]


class MMFuserAttentionVariantBlock(MMFuserBlock):
    """The MMFuser block with global attention or linear SRA as its cross- and self-attention (paper, Table VII).

    Reuses `MMFuserBlock` whole (forward, norms, gates) and swaps the two deformable attentions it builds.
    """

    def __init__(self, config: MMFuserLlavaConfig):
        super().__init__(config)
        hidden_size, num_heads = config.vision_config.hidden_size, config.fuser_num_heads
        for name in self.attention_names():
            if config.fuser_attention_type == "global":
                attention = MMFuserGlobalAttention(hidden_size, num_heads)
            else:
                attention = MMFuserLinearSRAttention(
                    hidden_size, num_heads, config.fuser_sra_pool_size, config.fuser_layer_norm_eps
                )
            setattr(self, name, attention)


class MMFuserQueryLayer(nn.Module):
    """The query layer alone, as LLaVA-1.5 feeds its projector: the single-layer baseline the paper compares with."""

    def forward(self, query: torch.Tensor, keys_values: list[torch.Tensor]) -> torch.Tensor:
        return query


class MMFuserConcat(nn.Module):
    """Channel concatenation of the key/value layers and the query layer, in that order (no parameters)."""

    def forward(self, query: torch.Tensor, keys_values: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([*keys_values, query], dim=-1)


class MMFuserAverage(nn.Module):
    """Element-wise mean of the key/value layers and the query layer (no parameters)."""

    def forward(self, query: torch.Tensor, keys_values: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([*keys_values, query]).mean(0)


class MMFuserWeightedAverage(nn.Module):
    """`sum_i layer_weights[i] * layer_i` over the key/value layers and the query layer (last).

    The weights start at one-hot on the query layer (see `init_fusion_variant_weights`), so the untrained fuser returns
    the query layer exactly, as the MMFuser block does. They are free scalars, not a softmax, as in the paper's
    `sum w_i F_i`, which is what allows an exact one-hot start.
    """

    def __init__(self, num_layers: int):
        super().__init__()
        self.layer_weights = nn.Parameter(query_layer_one_hot(num_layers))

    def forward(self, query: torch.Tensor, keys_values: list[torch.Tensor]) -> torch.Tensor:
        layers = torch.stack([*keys_values, query])
        return (self.layer_weights.to(layers.dtype).view(-1, *[1] * query.dim()) * layers).sum(0)


def query_layer_one_hot(num_layers: int) -> torch.Tensor:
    """Weight 1 on the last (query) layer, 0 on the key/value layers."""
    weights = torch.zeros(num_layers)
    weights[-1] = 1.0
    return weights


class MMFuserConcatProjector(LlavaMultiModalProjector):
    """LLaVA's two-layer MLP projector reading the concatenation of every selected layer."""

    def __init__(self, config: MMFuserLlavaConfig):
        super().__init__(config)
        self.linear_1 = nn.Linear(
            config.fuser_output_size, config.text_config.hidden_size, bias=config.multimodal_projector_bias
        )


def build_fuser(config: MMFuserLlavaConfig) -> nn.Module:
    """The fuser `config.fuser_fusion` and `config.fuser_attention_type` ask for; the default is `MMFuserBlock`."""
    if config.fuser_fusion == "mmfuser" and config.fuser_attention_type == "deformable":
        return MMFuserBlock(config)
    if config.fuser_fusion == "mmfuser":
        return MMFuserAttentionVariantBlock(config)
    if config.fuser_fusion == "none":
        return MMFuserQueryLayer()
    if config.fuser_fusion == "concat":
        return MMFuserConcat()
    if config.fuser_fusion == "average":
        return MMFuserAverage()
    return MMFuserWeightedAverage(len(config.fuser_hidden_state_indices))


def build_projector(config: MMFuserLlavaConfig) -> LlavaMultiModalProjector:
    """LLaVA's projector, widened to the fuser's output for concatenation."""
    return MMFuserConcatProjector(config) if config.fuser_fusion == "concat" else LlavaMultiModalProjector(config)


def init_fusion_variant_weights(module: nn.Module) -> None:
    """The variants' share of `MMFuserLlavaPreTrainedModel._init_weights` (which zeroes the block's gates).

    Attention projections as the deformable attention's value/output projections: Xavier-uniform, zero bias.
    """
    if isinstance(module, MMFuserAttentionVariantBlock):
        for name in module.attention_names():
            for projection in getattr(module, name).projections():
                init.xavier_uniform_(projection.weight)
                init.zeros_(projection.bias)
    elif isinstance(module, MMFuserWeightedAverage):
        init.copy_(module.layer_weights, query_layer_one_hot(module.layer_weights.numel()))


__all__ = [
    "MMFuserAttentionVariantBlock",
    "MMFuserAverage",
    "MMFuserConcat",
    "MMFuserConcatProjector",
    "MMFuserGlobalAttention",
    "MMFuserLinearSRAttention",
    "MMFuserQueryLayer",
    "MMFuserWeightedAverage",
    "build_fuser",
    "build_projector",
    "init_fusion_variant_weights",
]
