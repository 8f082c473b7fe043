"""State-dict names: the authors' LLaVA layout (and a CLIP checkpoint's) to this port's native layout.

The original's `mm_projector` is `Sequential(fuser, Linear, GELU, Linear)`, so its MLP is `.1`/`.3` (plain LLaVA-1.5
uses `.0`/`.2`). The fuser's parameter names, `gamma1`/`gamma2` included, are the port's own. Every source name is
either mapped or dropped for a documented reason; anything else is an error (see `map_names`).
"""

import re
from dataclasses import dataclass

from .errors import ConversionError

VISION_TOWER_PREFIX = "model.vision_tower."
ORIGINAL_VISION_PREFIX = "model.vision_tower.vision_tower.vision_model."

# Prefix rules, first match wins.
ORIGINAL_PREFIXES = (
    ("model.mm_projector.0.", "model.fuser."),
    ("model.mm_projector.1.", "model.multi_modal_projector.linear_1."),
    ("model.mm_projector.3.", "model.multi_modal_projector.linear_2."),
    (ORIGINAL_VISION_PREFIX, VISION_TOWER_PREFIX),
    ("model.embed_tokens.", "model.language_model.embed_tokens."),
    ("model.layers.", "model.language_model.layers."),
    ("model.norm.", "model.language_model.norm."),
    ("lm_head.", "lm_head."),
)

# Buffers that older transformers saved and that the model rebuilds from its config when it loads.
ORIGINAL_DROPPED = (
    (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq", "rotary frequencies, recomputed from the rope settings"),
    (re.escape(ORIGINAL_VISION_PREFIX) + r"embeddings\.position_ids", "CLIP position ids, a constant buffer"),
)

# A CLIP checkpoint named by --vision-tower: a full CLIPModel (`vision_model.*` beside the text half), a transformers-4
# CLIPVisionModel (`vision_model.*`) or a transformers-5 CLIPVisionModel (no `vision_model.` level).
VISION_TOWER_PREFIXES = (("vision_model.", VISION_TOWER_PREFIX),) + tuple(
    (part, VISION_TOWER_PREFIX + part) for part in ("embeddings.", "pre_layrnorm.", "encoder.", "post_layernorm.")
)
VISION_TOWER_DROPPED = (
    (r"(vision_model\.)?embeddings\.position_ids", "CLIP position ids, a constant buffer"),
    (r"text_model\..*|text_projection\..*|visual_projection\..*|logit_scale", "CLIP's text half and projections"),
)


@dataclass
class NameMapping:
    """`mapped` (source name -> target name) and `dropped` (source name -> reason) of one checkpoint."""

    mapped: dict[str, str]
    dropped: dict[str, str]


def map_names(
    names: list[str], prefixes: tuple[tuple[str, str], ...], dropped: tuple[tuple[str, str], ...], source: str
) -> NameMapping:
    """Map each name by its first matching prefix, or drop it by rule; unknown names are an error listing them."""
    mapping = NameMapping({}, {})
    unknown = []
    for name in names:
        reason = next((why for pattern, why in dropped if re.fullmatch(pattern, name)), None)
        if reason is not None:
            mapping.dropped[name] = reason
            continue
        rule = next(((old, new) for old, new in prefixes if name.startswith(old)), None)
        if rule is None:
            unknown.append(name)
        else:
            mapping.mapped[name] = rule[1] + name[len(rule[0]) :]
    if unknown:
        raise ConversionError(
            f"{len(unknown)} tensors of {source} have names the converter does not know, so it cannot place them: "
            f"{unknown[:20]}{' ...' if len(unknown) > 20 else ''}"
        )
    return mapping


def map_original_names(names: list[str], source: str) -> NameMapping:
    return map_names(names, ORIGINAL_PREFIXES, ORIGINAL_DROPPED, source)


def map_vision_tower_names(names: list[str], source: str) -> NameMapping:
    return map_names(names, VISION_TOWER_PREFIXES, VISION_TOWER_DROPPED, source)


__all__ = [
    "NameMapping",
    "ORIGINAL_DROPPED",
    "ORIGINAL_PREFIXES",
    "ORIGINAL_VISION_PREFIX",
    "VISION_TOWER_PREFIX",
    "map_original_names",
    "map_vision_tower_names",
]
