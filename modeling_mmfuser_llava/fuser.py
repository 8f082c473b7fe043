"""The MMFuser block: the query layer gathers detail from shallower layers through deformable attention.

Hub-facing: imports only torch and the project's other Hub files.
"""

import torch
from torch import nn

from .configuration_mmfuser_llava import MMFuserLlavaConfig
from .deformable_attention import MMFuserDeformableAttention


class MMFuserBlock(nn.Module):
    """`query + gamma1 * (A + gamma2 * SelfAttn(LN(A)))` with `A = CrossAttn(LN(query), LN(keys_values))`; with
    `fuser_self_attention=False` (the paper's Table VIII, cross-attention alone) `query + gamma1 * A`.

    The gates `gamma1`/`gamma2` start at zero (see `MMFuserLlavaPreTrainedModel._init_weights`), so an untrained fuser
    returns its query unchanged and the model starts out as LLaVA-1.5. Parameter names are the original
    `MSCrossAttnBlock`'s, so a checkpoint's `mm_projector.0.*` maps one to one onto this module.
    """

    def __init__(self, config: MMFuserLlavaConfig):
        super().__init__()
        hidden_size = config.vision_config.hidden_size
        num_levels = len(config.fuser_key_value_layers)
        eps = config.fuser_layer_norm_eps
        self.grid_size = config.vision_grid_size
        self.query_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.feat_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.cross_attn = MMFuserDeformableAttention(
            hidden_size, num_levels, config.fuser_num_heads, config.fuser_num_points
        )
        self.gamma1 = nn.Parameter(torch.zeros(hidden_size))
        self.use_self_attention = config.fuser_self_attention
        if self.use_self_attention:
            self.norm1 = nn.LayerNorm(hidden_size, eps=eps)
            self.self_attn = MMFuserDeformableAttention(hidden_size, 1, config.fuser_num_heads, config.fuser_num_points)
            self.gamma2 = nn.Parameter(torch.zeros(hidden_size))

    def attention_names(self) -> tuple[str, ...]:
        """The block's attention submodules: the cross-attention, then the self-attention where there is one."""
        return ("cross_attn", "self_attn") if self.use_self_attention else ("cross_attn",)

    def forward(self, query: torch.Tensor, keys_values: list[torch.Tensor]) -> torch.Tensor:
        """query: (batch, grid**2, hidden); keys_values: one (batch, grid**2, hidden) map per level, in level order."""
        expected_tokens = self.grid_size**2
        for name, tokens in [("query", query.shape[1])] + [("key/value", kv.shape[1]) for kv in keys_values]:
            if tokens != expected_tokens:
                raise ValueError(
                    f"The fuser's {name} map has {tokens} tokens, but the vision tower's {self.grid_size}x"
                    f"{self.grid_size} patch grid gives {expected_tokens}: check vision_feature_select_strategy "
                    "('default' drops a CLS token, 'full' keeps every token) and the size of pixel_values"
                )
        attended = self.cross_attn(self.query_norm(query), self.feat_norm(torch.cat(keys_values, 1)), self.grid_size)
        if self.use_self_attention:
            normed = self.norm1(attended)
            attended = attended + self.gamma2 * self.self_attn(normed, normed, self.grid_size)
        return query + self.gamma1 * attended


__all__ = ["MMFuserBlock"]
