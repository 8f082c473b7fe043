"""Random-weight models at the real sizes: CLIP ViT-L/14-336 (LLaVA-1.5's vision tower) and Llama language models."""

from dataclasses import dataclass

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

from modeling_mmfuser_llava import MMFuserLlavaConfig

CLIP_L336 = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336,
    patch_size=14, projection_dim=768,
)
IMAGE_TOKENS = (336 // 14) ** 2
IMAGE_TOKEN_ID = 32000
# Vicuna-7B's width: the projector of LLaVA-1.5-7B maps 1024 -> 4096 -> 4096.
VICUNA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32)
# A small language model for generation: decoding is cheap, so encoding the image is a large share of the time.
SMALL_LM = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16)
# The footprint benchmark's mid-size language model: TinyLlama-1.1B's width, 8 of its 22 layers (0.8B in all).
MID_SIZE_LM = dict(
    hidden_size=2048, intermediate_size=5632, num_hidden_layers=8, num_attention_heads=32, num_key_value_heads=4
)


@dataclass(frozen=True)
class Sizes:
    """What a benchmark row builds: the vision tower, the language model whose width the projector maps to (vision
    path) and the small language model (generation, training). `REAL` is what the table reports; `TINY` runs the
    same code in seconds (the GPU check's dry run on a CPU)."""

    vision: dict
    projector_lm: dict
    small_lm: dict

    @property
    def image_size(self) -> int:
        return self.vision["image_size"]

    @property
    def image_tokens(self) -> int:
        return (self.vision["image_size"] // self.vision["patch_size"]) ** 2


REAL = Sizes(vision=CLIP_L336, projector_lm=VICUNA_7B, small_lm=SMALL_LM)
TINY_LM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
# 24 layers, so that the default fuser layers (-22, -17, -12, -7, query -2) exist.
TINY = Sizes(
    vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=24, num_attention_heads=4, image_size=56,
                patch_size=14, projection_dim=32),
    projector_lm=TINY_LM, small_lm=TINY_LM,
)


def model_configs(sizes: Sizes = REAL, **text_sizes) -> tuple[MMFuserLlavaConfig, LlavaConfig]:
    """MMFuser-LLaVA and plain LLaVA-1.5 configs with the same vision tower (CLIP-L/336 unless `sizes` says
    otherwise) and a Llama of the given sizes."""
    text_config = LlamaConfig(vocab_size=32064, max_position_embeddings=4096, pad_token_id=0, **text_sizes)
    common = dict(
        vision_config=CLIPVisionConfig(**sizes.vision), text_config=text_config, image_token_index=IMAGE_TOKEN_ID,
        image_seq_length=sizes.image_tokens, pad_token_id=0,
    )
    return MMFuserLlavaConfig(**common), LlavaConfig(vision_feature_layer=-2, **common)


def random_pixels(batch: int, dtype: torch.dtype, image_size: int = 336, device: str = "cpu") -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, image_size, image_size, generator=generator).to(device, dtype)


def setting_name(dtype: torch.dtype, device: str, *details: str) -> str:
    """A table row's setting: the dtype, the device where it is not the CPU, then `details`."""
    place = [] if device == "cpu" else [torch.device(device).type.upper()]
    return ", ".join([str(dtype).removeprefix("torch."), *place, *details])
