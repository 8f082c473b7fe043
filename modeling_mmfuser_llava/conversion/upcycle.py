"""Upcycle a transformers Llava checkpoint (e.g. llava-hf/llava-1.5-7b-hf) into an MMFuser-LLaVA.

Every Llava weight is kept; a fuser is added with the original initialisation, whose gates (`gamma1`, `gamma2`) start
at zero, so on the same inputs the upcycled model computes exactly what the base model computes until the fuser is
trained. The base's `vision_feature_layer` becomes the fuser's query layer.

The inputs are the processor's. By default (`processor="original"`, what the paper's training used) the folder gets
LLaVA-1.5's own preprocessing: images padded to a square, the vicuna_v1 prompt, the original code's token ids; a
llava-hf processor instead crops a non-square image to its centre and tokenizes its own way, so the two give different
inputs and different outputs for the same picture and question. `processor="base"` keeps the base's processor as it
is: the folder then answers exactly as the base model does when used through its own processor.
"""

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoProcessor,
    LlavaForConditionalGeneration,
    LlavaImageProcessorPil,
    LlavaProcessor,
)

from ..configuration_mmfuser_llava import MMFuserLlavaConfig
from ..fuser import MMFuserBlock
from ..hub_folder import save_hub_folder
from ..modeling_mmfuser_llava import MMFuserLlavaForConditionalGeneration
from ..processing import IMAGE_TOKEN, build_processor, prepare_tokenizer
from .errors import ConversionError
from .model_card import ModelCardInfo, build_model_card, with_default_base_model
from .sources import resolve_folder

# LlavaConfig fields carried over unchanged.
LLAVA_FIELDS = (
    "vision_config", "text_config", "image_token_index", "image_seq_length", "projector_hidden_act",
    "vision_feature_select_strategy", "vision_feature_layer", "multimodal_projector_bias", "tie_word_embeddings",
)
# Image processor settings kept from the base; padding to a square is switched on.
IMAGE_PROCESSOR_FIELDS = (
    "do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor", "do_normalize",
    "image_mean", "image_std", "do_convert_rgb",
)
BASE_PATTERNS = ["*.json", "*.model", "*.jinja", "*.safetensors"]
# What `processor=` accepts: LLaVA-1.5's preprocessing as the paper trained with, or the base's processor unchanged.
PROCESSORS = ("original", "base")


@dataclass
class UpcycleSummary:
    output_dir: Path
    parameters: int
    fuser_parameters: int
    seconds: float

    processor: str

    def __str__(self) -> str:
        inputs = ("the original LLaVA-1.5 preprocessing (pad to square, vicuna_v1)" if self.processor == "original"
                  else "the base's own processor")
        return (
            f"wrote {self.output_dir}\n  {self.parameters:,d} parameters, of which {self.fuser_parameters:,d} in the "
            f"new fuser (gates at 0: outputs equal the base model's on the same inputs until it is trained), "
            f"{self.seconds:.1f} s\n  processor: {inputs}"
        )


def share_llava_parts(source: LlavaForConditionalGeneration, target: LlavaForConditionalGeneration) -> None:
    """Give `target` the very modules (not copies) of `source`'s vision tower, projector, language model and lm_head."""
    target.model.vision_tower = source.model.vision_tower
    target.model.multi_modal_projector = source.model.multi_modal_projector
    target.model.language_model = source.model.language_model
    target.lm_head = source.lm_head


def upcycled_config(base_config, key_value_layers: tuple[int, ...] | None = None) -> MMFuserLlavaConfig:
    """The base's LlavaConfig plus the fuser; its single `vision_feature_layer` becomes the query layer."""
    if base_config.model_type != "llava":
        raise ConversionError(
            f"upcycle takes a transformers Llava checkpoint (model_type 'llava'), got {base_config.model_type!r}"
        )
    if not isinstance(base_config.vision_feature_layer, int):
        raise ConversionError(
            f"the base uses vision_feature_layer {base_config.vision_feature_layer!r}; the fuser's query must be one "
            "layer (a list means concatenated layers, which the fuser does not reproduce)"
        )
    if base_config.vision_feature_select_strategy != "default":
        raise ConversionError(
            f"the base uses vision_feature_select_strategy {base_config.vision_feature_select_strategy!r}; the fuser "
            "needs 'default' (CLS token dropped, a square patch grid)"
        )
    fields = {name: getattr(base_config, name) for name in LLAVA_FIELDS}
    fields["vision_config"] = fields["vision_config"].to_dict()
    fields["text_config"] = fields["text_config"].to_dict()
    if key_value_layers is not None:
        fields["fuser_key_value_layers"] = tuple(key_value_layers)
    if getattr(base_config, "pad_token_id", None) is not None:
        fields["pad_token_id"] = base_config.pad_token_id
    try:
        return MMFuserLlavaConfig(**fields)
    except ValueError as error:
        raise ConversionError(f"the base model cannot take a fuser: {error}") from None


def upcycled_processor(base_folder: Path, config: MMFuserLlavaConfig, processor: str = "original") -> LlavaProcessor:
    """`"original"`: the base's tokenizer, tokenizing as the original does (`prepare_tokenizer`, as training does), and
    its image settings, with pad-to-square and the vicuna_v1 chat template. `"base"`: the base's processor unchanged."""
    if processor not in PROCESSORS:
        raise ConversionError(f"processor must be one of {', '.join(PROCESSORS)}, got {processor!r}")
    base = AutoProcessor.from_pretrained(base_folder)
    if not isinstance(base, LlavaProcessor):
        raise ConversionError(f"the processor of {base_folder} is a {type(base).__name__}, not a LlavaProcessor")
    if processor == "base":
        return base
    if IMAGE_TOKEN not in base.tokenizer.get_vocab():
        raise ConversionError(f"the tokenizer of {base_folder} has no {IMAGE_TOKEN} token")
    if prepare_tokenizer(base.tokenizer):  # the base's embeddings have no row for an added token
        raise ConversionError(f"the tokenizer of {base_folder} has no pad token")
    vision = config.vision_config
    strategy = config.vision_feature_select_strategy
    processor = build_processor(base.tokenizer, vision.image_size, vision.patch_size, strategy)
    settings = {name: getattr(base.image_processor, name) for name in IMAGE_PROCESSOR_FIELDS
                if getattr(base.image_processor, name, None) is not None}
    processor.image_processor = LlavaImageProcessorPil(**settings, do_pad=True)
    return processor


def fresh_fuser(model: MMFuserLlavaForConditionalGeneration, seed: int, dtype: torch.dtype) -> MMFuserBlock:
    """A fuser with the original initialisation (`_init_weights`), seeded without touching the global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fuser = MMFuserBlock(model.config)
        fuser.apply(model._init_weights)
    return fuser.to(dtype)


def upcycle_llava(
    base: str | Path,
    output_dir: str | Path,
    key_value_layers: tuple[int, ...] | None = None,
    seed: int = 0,
    overwrite: bool = False,
    max_shard_size: int | str = "5GB",
    card: ModelCardInfo | None = None,
    processor: str = "original",
) -> UpcycleSummary:
    """Write `base` (a Llava folder or Hub id) with a freshly initialised fuser as a Hub-ready folder `output_dir`;
    `processor` ("original" or "base") chooses the folder's processor (see the module's docstring)."""
    start = time.perf_counter()
    base_folder = resolve_folder(base, BASE_PATTERNS)
    config = upcycled_config(AutoConfig.from_pretrained(base_folder), key_value_layers)
    folder_processor = upcycled_processor(base_folder, config, processor)
    # LlavaForConditionalGeneration maps the llava-hf checkpoints' older key layout.
    base_model = LlavaForConditionalGeneration.from_pretrained(base_folder, dtype="auto").eval()
    with torch.device("meta"):
        model = MMFuserLlavaForConditionalGeneration(config)
    share_llava_parts(base_model, model)
    model.model.fuser = fresh_fuser(model, seed, base_model.dtype)
    model.generation_config = copy.deepcopy(base_model.generation_config)
    model.eval()

    inputs = (
        "This folder's processor is LLaVA-1.5's original preprocessing (images padded to a square, the vicuna_v1 "
        "prompt), as the paper trained with; a llava-hf processor crops non-square images instead, so the same "
        "picture and question give other inputs there."
        if processor == "original" else "This folder keeps the base's own processor."
    )
    provenance = (
        f"Upcycled with `mmfuser-llava upcycle` from `{base}`: all of its weights, plus a fuser initialised as in the "
        "original (gates at zero). Until the fuser is trained, the model's outputs equal the base model's on the same "
        f"inputs. {inputs}"
    )
    model_card = build_model_card(with_default_base_model(card, base), config, provenance, Path(output_dir).name)
    save_hub_folder(model, folder_processor, output_dir, overwrite, max_shard_size,
                    extra_files=lambda folder: model_card.save(folder / "README.md"))
    return UpcycleSummary(
        output_dir=Path(output_dir),
        parameters=model.num_parameters(),
        fuser_parameters=sum(parameter.numel() for parameter in model.model.fuser.parameters()),
        seconds=time.perf_counter() - start,
        processor=processor,
    )


__all__ = [
    "PROCESSORS", "UpcycleSummary", "fresh_fuser", "share_llava_parts", "upcycle_llava", "upcycled_config",
    "upcycled_processor",
]
