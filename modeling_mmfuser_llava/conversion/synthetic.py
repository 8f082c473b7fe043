"""A synthetic multi-GB checkpoint in the authors' layout, for the conversion benchmark (random weights, real shapes).

Vicuna-7B widths (hidden 4096, MLP 11008, a 32000-token vocabulary) with as many layers as the requested size
allows, a CLIP ViT-L/14-336 vision tower inside the checkpoint, the 4-level fuser and the MLP, under the original
names. It is written shard by shard, so building it needs no more memory than one shard.
"""

import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaTokenizer,
)

from ..configuration_mmfuser_llava import MMFuserLlavaConfig
from ..fuser import MMFuserBlock
from ..tiny import train_tiny_sentencepiece

VOCAB_SIZE = 32000
LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                max_position_embeddings=4096, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                tie_word_embeddings=False)
CLIP_L_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                  image_size=336, patch_size=14, projection_dim=768)
SELECT_LAYERS = [-22, -17, -12, -7, -2]


def write_tokenizer(folder: Path, size: int) -> None:
    """The tiny trained Llama tokenizer padded with unused tokens up to `size` (Llama's 32000).

    Written as tokenizer.json: converting a 32000-piece tokenizer.model to a fast tokenizer takes minutes, which is
    not what this benchmark measures.
    """
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "tokenizer.model").write_bytes(train_tiny_sentencepiece())
        tokenizer = LlamaTokenizer.from_pretrained(scratch, legacy=True, pad_token="<unk>")
    tokenizer.add_tokens([f"<unused_{index}>" for index in range(len(tokenizer), size)])
    tokenizer.save_pretrained(folder)


def original_shapes(num_layers: int) -> dict[str, tuple[int, ...]]:
    """Every tensor of the original model, in the order the original saved them: LM, vision tower, projector, head."""
    with torch.device("meta"):
        language_model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB_SIZE, num_hidden_layers=num_layers, **LLAMA_7B))
        vision = CLIPVisionModel(CLIPVisionConfig(**CLIP_L_336))
        fuser = MMFuserBlock(MMFuserLlavaConfig(
            vision_config=dict(model_type="clip_vision_model", **CLIP_L_336),
            text_config=dict(model_type="llama", vocab_size=VOCAB_SIZE, **LLAMA_7B),
            fuser_key_value_layers=tuple(SELECT_LAYERS[:-1]), vision_feature_layer=SELECT_LAYERS[-1],
        ))
    shapes = {name: tuple(tensor.shape) for name, tensor in language_model.state_dict().items()}
    del shapes["lm_head.weight"]  # saved last by the original, after the multimodal parts
    shapes.update({f"model.vision_tower.vision_tower.vision_model.{name}": tuple(tensor.shape)
                   for name, tensor in vision.state_dict().items()})
    shapes.update({f"model.mm_projector.0.{name}": tuple(tensor.shape) for name, tensor in fuser.state_dict().items()})
    hidden, vision_hidden = LLAMA_7B["hidden_size"], CLIP_L_336["hidden_size"]
    shapes.update({
        "model.mm_projector.1.weight": (hidden, vision_hidden), "model.mm_projector.1.bias": (hidden,),
        "model.mm_projector.3.weight": (hidden, hidden), "model.mm_projector.3.bias": (hidden,),
        "lm_head.weight": (VOCAB_SIZE, hidden),
    })
    return shapes


def layers_for_size(total_bytes: int, dtype: torch.dtype) -> int:
    """How many Llama-7B layers make the checkpoint about `total_bytes` (at least one)."""
    fixed = sum(torch.Size(shape).numel() for shape in original_shapes(0).values()) * dtype.itemsize
    per_layer = sum(torch.Size(shape).numel() for shape in original_shapes(1).values()) * dtype.itemsize - fixed
    return max(1, round((total_bytes - fixed) / per_layer))


def _group_into_shards(shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, shard_bytes: int) -> list[list[str]]:
    """Consecutive names whose tensors fill shards of at most `shard_bytes` (a larger tensor gets its own)."""
    shards, size = [[]], 0
    for name, shape in shapes.items():
        nbytes = torch.Size(shape).numel() * dtype.itemsize
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def write_synthetic_checkpoint(
    folder: str | Path,
    total_bytes: int,
    shard_bytes: int,
    weight_format: str = "safetensors",
    dtype: torch.dtype = torch.float16,
    seed: int = 0,
) -> Path:
    """Write the checkpoint (and its CLIP config folder, `folder/clip-vit-large-patch14-336`); returns its folder."""
    folder = Path(folder)
    checkpoint, vision_tower = folder / "checkpoint", folder / "clip-vit-large-patch14-336"
    checkpoint.mkdir(parents=True)
    CLIPVisionConfig(**CLIP_L_336).save_pretrained(vision_tower)
    size = CLIP_L_336["image_size"]
    CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(
        vision_tower
    )
    num_layers = layers_for_size(total_bytes, dtype)
    config = {
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava_llama", **LLAMA_7B,
        "num_hidden_layers": num_layers, "vocab_size": VOCAB_SIZE, "torch_dtype": str(dtype).removeprefix("torch."),
        "image_aspect_ratio": "pad", "mm_hidden_size": CLIP_L_336["hidden_size"], "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_feature": "patch", "mm_vision_select_layer": "list" + "/".join(map(str, SELECT_LAYERS)),
        "mm_vision_tower": str(vision_tower), "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
    }
    (checkpoint / "config.json").write_text(json.dumps(config, indent=2))
    write_tokenizer(checkpoint, VOCAB_SIZE)
    stem, suffix = ("model", "safetensors") if weight_format == "safetensors" else ("pytorch_model", "bin")
    shapes = original_shapes(num_layers)
    shards = _group_into_shards(shapes, dtype, shard_bytes)
    generator = torch.Generator().manual_seed(seed)
    weight_map = {}
    for index, names in enumerate(shards, start=1):
        filename = f"{stem}-{index:05d}-of-{len(shards):05d}.{suffix}"
        shard = {name: (torch.randn(shapes[name], generator=generator) * 0.02).to(dtype) for name in names}
        if weight_format == "safetensors":
            save_file(shard, checkpoint / filename, metadata={"format": "pt"})
        else:
            torch.save(shard, checkpoint / filename)
        weight_map.update(dict.fromkeys(shard, filename))
        del shard
    total = sum(torch.Size(shape).numel() for shape in shapes.values()) * dtype.itemsize
    index_file = checkpoint / f"{stem}.{suffix}.index.json"
    index_file.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return checkpoint


__all__ = ["layers_for_size", "original_shapes", "write_synthetic_checkpoint"]
