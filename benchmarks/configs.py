"""Random-weight models at the real sizes: CLIP ViT-L/14-336 (LLaVA-1.5's vision tower) and Llama language models."""

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


def model_configs(**text_sizes) -> tuple[MMFuserLlavaConfig, LlavaConfig]:
    """MMFuser-LLaVA and plain LLaVA-1.5 configs with the same CLIP-L/336 tower and a Llama of the given sizes."""
    text_config = LlamaConfig(vocab_size=32064, max_position_embeddings=4096, pad_token_id=0, **text_sizes)
    common = dict(
        vision_config=CLIPVisionConfig(**CLIP_L336), text_config=text_config, image_token_index=IMAGE_TOKEN_ID,
        image_seq_length=IMAGE_TOKENS, pad_token_id=0,
    )
    return MMFuserLlavaConfig(**common), LlavaConfig(vision_feature_layer=-2, **common)


def random_pixels(batch: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(batch, 3, 336, 336, generator=torch.Generator().manual_seed(0)).to(dtype)
