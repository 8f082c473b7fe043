"""Tiny checkpoints in the layout the authors' LLaVA code writes, and an independent emulation of that model's forward.

Names, config fields and tokenization are written out here by hand from the original code base (not taken from the
converter), so that a wrong mapping in the converter cannot be mirrored by the fixture. The fuser's names, shapes and
computation come from `original_fuser` (checked against the authors' outputs), not from this package's MMFuserBlock:
nothing of the emulated original is built from the code under test.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import sentencepiece
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from original_fuser import original_fuser, random_original_fuser_weights

from modeling_mmfuser_llava.processing import VICUNA_V1_SYSTEM_PROMPT
from modeling_mmfuser_llava.tiny import train_tiny_sentencepiece

IMAGE_TOKEN_INDEX = -200  # the original's placeholder id for "<image>"
SELECT_LAYERS = (-22, -17, -12, -7, -2)  # query last; the original block reads the first four as keys/values
FUSER_HEADS, FUSER_POINTS = 16, 4  # the original always builds its block with these (and one level per key/value map)
CLIP_IMAGE_SIZE, CLIP_PATCH_SIZE, CLIP_HIDDEN = 32, 4, 32

LLAMA_FIELDS = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=512, rms_norm_eps=1e-5, hidden_act="silu", initializer_range=0.02, bos_token_id=1,
    eos_token_id=2, pad_token_id=0, pretraining_tp=1, tie_word_embeddings=False, rope_theta=10000.0, rope_scaling=None,
    use_cache=True,
)


def write_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A tiny CLIP in the layout of openai/clip-vit-large-patch14-336: full CLIPModel weights, image processor."""
    config = CLIPConfig(
        vision_config=dict(hidden_size=CLIP_HIDDEN, intermediate_size=64, num_hidden_layers=24, num_attention_heads=4,
                           image_size=CLIP_IMAGE_SIZE, patch_size=CLIP_PATCH_SIZE, projection_dim=16),
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=50, projection_dim=16),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessorPil(
        size={"shortest_edge": CLIP_IMAGE_SIZE}, crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE}
    ).save_pretrained(folder)
    return folder


@dataclass
class OriginalModel:
    """The original model's weights under their original names, its tokenizer model, its vision tower folder and the
    `mm_vision_select_layer` list it was trained with (the fuser's weights do not depend on which layers it names)."""

    weights: dict[str, torch.Tensor]
    sentencepiece_model: bytes
    clip_folder: Path
    select_layers: tuple[int, ...] = SELECT_LAYERS

    @property
    def vocab_size(self) -> int:
        return self.weights["model.embed_tokens.weight"].shape[0]


def make_original_model(clip_folder: Path, seed: int = 0) -> OriginalModel:
    """Seeded random weights of every original module; the fuser's gates are far from zero, so the fuser matters."""
    sentencepiece_model = train_tiny_sentencepiece(seed=seed)
    vocab_size = sentencepiece.SentencePieceProcessor(model_proto=sentencepiece_model).get_piece_size()
    torch.manual_seed(seed)
    weights = dict(LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, **LLAMA_FIELDS)).state_dict())
    generator = torch.Generator().manual_seed(seed + 1)
    fuser = random_original_fuser_weights(CLIP_HIDDEN, len(SELECT_LAYERS) - 1, FUSER_HEADS, FUSER_POINTS, generator)
    weights.update({f"model.mm_projector.0.{name}": value for name, value in fuser.items()})
    hidden = LLAMA_FIELDS["hidden_size"]
    for index, (rows, columns) in ((1, (hidden, CLIP_HIDDEN)), (3, (hidden, hidden))):
        weights[f"model.mm_projector.{index}.weight"] = torch.randn(rows, columns, generator=generator) / columns**0.5
        weights[f"model.mm_projector.{index}.bias"] = 0.1 * torch.randn(rows, generator=generator)
    vision = CLIPVisionModel.from_pretrained(clip_folder).state_dict()
    weights.update({f"model.vision_tower.vision_tower.vision_model.{name}": value for name, value in vision.items()})
    return OriginalModel(weights, sentencepiece_model, clip_folder)


def original_config(original: OriginalModel, **overrides) -> dict:
    """config.json as the authors' training writes it (transformers 4.x, LlavaLlamaForCausalLM)."""
    config = {
        "_name_or_path": "./checkpoints/vicuna-7b-v1.5",
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava_llama",
        **LLAMA_FIELDS,
        "vocab_size": original.vocab_size,
        "torch_dtype": "float32",
        "transformers_version": "4.37.2",
        "max_length": 4096,
        "freeze_mm_mlp_adapter": False,
        "image_aspect_ratio": "pad",
        "mm_hidden_size": CLIP_HIDDEN,
        "mm_patch_merge_type": "flat",
        "mm_projector_type": "mlp2x_gelu",
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": "list" + "/".join(str(layer) for layer in original.select_layers),
        "mm_vision_tower": str(original.clip_folder),
        "ms_cross_attn_lr": None,
        "tokenizer_model_max_length": 2048,
        "tokenizer_padding_side": "right",
        "tune_mm_mlp_adapter": False,
        "use_mm_proj": True,
    }
    config.update(overrides)
    return config


def write_original_checkpoint(
    folder: Path,
    original: OriginalModel,
    weight_format: str = "bin",
    with_vision: bool = True,
    pad_token: str | None = "<unk>",
    config_overrides: dict | None = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    num_shards: int = 2,
) -> Path:
    """The checkpoint folder: config.json, sentencepiece tokenizer, `num_shards` weight shards of `weight_format`."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = {name: value for name, value in original.weights.items()
               if with_vision or not name.startswith("model.vision_tower.")}
    weights.update(extra_tensors or {})
    names = sorted(weights)
    (folder / "config.json").write_text(json.dumps(original_config(original, **(config_overrides or {})), indent=2))
    (folder / "tokenizer.model").write_bytes(original.sentencepiece_model)
    tokenizer_config = {"tokenizer_class": "LlamaTokenizer", "legacy": False, "add_bos_token": True,
                        "add_eos_token": False, "model_max_length": 2048, "padding_side": "right",
                        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": pad_token}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    stem, suffix = ("pytorch_model", ".bin") if weight_format == "bin" else ("model", ".safetensors")
    weight_map = {}
    for shard_index in range(num_shards):
        filename = f"{stem}-{shard_index + 1:05d}-of-{num_shards:05d}{suffix}"
        shard = {name: weights[name].contiguous() for name in names[shard_index::num_shards]}
        if weight_format == "bin":
            torch.save(shard, folder / filename)
        else:
            save_file(shard, folder / filename, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, filename))
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in weights.values())},
             "weight_map": weight_map}
    (folder / f"{stem}{suffix}.index.json").write_text(json.dumps(index, indent=2))
    return folder


def original_prompt(question: str) -> str:
    """conv_vicuna_v1 with one image, as the original evaluation builds it."""
    return f"{VICUNA_V1_SYSTEM_PROMPT} USER: <image>\n{question} ASSISTANT:"


def original_input_ids(original: OriginalModel, prompt: str) -> list[int]:
    """The original's tokenizer_image_token: each chunk around "<image>" tokenized alone (BOS once), -200 between."""
    processor = sentencepiece.SentencePieceProcessor(model_proto=original.sentencepiece_model)
    chunks = prompt.split("<image>")
    ids = [processor.bos_id()]
    for index, chunk in enumerate(chunks):
        if index:
            ids.append(IMAGE_TOKEN_INDEX)
        ids += processor.encode(chunk)
    return ids


def original_pixel_values(original: OriginalModel, image: Image.Image) -> torch.Tensor:
    """image_aspect_ratio 'pad': centre on a square of the CLIP mean colour, then the vision tower's processor."""
    processor = CLIPImageProcessorPil.from_pretrained(original.clip_folder)
    background = tuple(int(mean * 255) for mean in processor.image_mean)
    side = max(image.size)
    square = Image.new(image.mode, (side, side), background)
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return processor(square, return_tensors="pt")["pixel_values"]


class OriginalForward:
    """The original LlavaLlamaForCausalLM's computation, rebuilt from stock parts and the original weights."""

    def __init__(self, original: OriginalModel):
        self.vision = CLIPVisionModel.from_pretrained(original.clip_folder).eval()  # the original reloads CLIP
        self.select_layers = original.select_layers
        prefix = "model.mm_projector.0."
        self.fuser = {name[len(prefix):]: value for name, value in original.weights.items() if name.startswith(prefix)}
        self.projector = {name: original.weights[f"model.mm_projector.{name}"] for name in
                          ("1.weight", "1.bias", "3.weight", "3.bias")}
        self.llama = LlamaForCausalLM(LlamaConfig(vocab_size=original.vocab_size, **LLAMA_FIELDS)).eval()
        self.llama.load_state_dict(
            {name: value for name, value in original.weights.items()
             if name.startswith(("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head."))}
        )

    @torch.no_grad()
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden_states = self.vision(pixel_values, output_hidden_states=True).hidden_states
        maps = [hidden_states[index][:, 1:] for index in self.select_layers]  # select feature 'patch': drop CLS
        fused = original_fuser(self.fuser, maps[-1], maps[:-1], FUSER_HEADS)
        hidden = F.linear(fused, self.projector["1.weight"], self.projector["1.bias"])
        return F.linear(F.gelu(hidden), self.projector["3.weight"], self.projector["3.bias"])

    @torch.no_grad()
    def embeddings(self, input_ids: list[int], image_features: torch.Tensor) -> torch.Tensor:
        """prepare_inputs_labels_for_multimodal: embed the text around the placeholder, splice the image in."""
        position = input_ids.index(IMAGE_TOKEN_INDEX)
        embed = self.llama.get_input_embeddings()
        before, after = torch.tensor(input_ids[:position]), torch.tensor(input_ids[position + 1 :])
        return torch.cat([embed(before), image_features, embed(after)])[None]

    @torch.no_grad()
    def logits(self, input_ids: list[int], pixel_values: torch.Tensor) -> torch.Tensor:
        return self.llama(inputs_embeds=self.embeddings(input_ids, self.image_features(pixel_values)[0])).logits

    @torch.no_grad()
    def greedy(self, input_ids: list[int], pixel_values: torch.Tensor, max_new_tokens: int) -> list[int]:
        embeds = self.embeddings(input_ids, self.image_features(pixel_values)[0])
        generated = []
        for _ in range(max_new_tokens):
            token = int(self.llama(inputs_embeds=embeds).logits[0, -1].argmax())
            generated.append(token)
            if token == self.llama.config.eos_token_id:
                break
            embeds = torch.cat([embeds, self.llama.get_input_embeddings()(torch.tensor([[token]]))], 1)
        return generated


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> OriginalModel:
    """A seeded tiny original model; its CLIP folder plays the role of mm_vision_tower."""
    return make_original_model(write_tiny_clip(tmp_path_factory.mktemp("clip-vit-tiny")))
