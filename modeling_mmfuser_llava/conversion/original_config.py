"""The authors' `config.json` (Llama fields plus LLaVA's `mm_*` fields) translated into an `MMFuserLlavaConfig`.

Every field is accounted for: translated, checked against what the port can do (anything it cannot honour is a
`ConversionError`, never a silent default), or dropped because it only steered training (listed in `TRAINING_FIELDS`).
"""

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from transformers import CLIPVisionConfig, GenerationConfig, LlamaConfig, PretrainedConfig, PreTrainedTokenizerBase

from ..configuration_mmfuser_llava import MMFuserLlavaConfig
from ..processing import IMAGE_TOKEN
from .errors import ConversionError

logger = logging.getLogger(__name__)

# The original MSCrossAttnBlock always reads the first 4 selected maps as keys/values and the last as the query.
ORIGINAL_KEY_VALUE_LEVELS = 4

ORIGINAL_MODEL_TYPES = ("llava", "llava_llama")

# Fields the original training wrote into the config that do not change what the trained model computes.
TRAINING_FIELDS = {
    "tune_mm_mlp_adapter": "stage-1 training flag",
    "freeze_mm_mlp_adapter": "training flag",
    "use_mm_proj": "always true once a projector exists",
    "ms_cross_attn_lr": "learning rate of the fuser",
    "mm_projector_lr": "learning rate of the projector",
    "mm_vision_tower_lr": "learning rate of the vision tower",
    "unfreeze_mm_vision_tower": "training flag (trained vision weights are in the checkpoint, and used)",
    "pretrain_mm_mlp_adapter": "path of the stage-1 weights",
    "tokenizer_padding_side": "the side the training collator padded on",
    "tokenizer_model_max_length": "the original truncates the spliced sequence to this length; the port does not, "
    "which only matters for inputs longer than it",
    "mm_use_im_patch_token": "adds an unused <im_patch> token, already in the saved tokenizer and embeddings",
}

# Legacy spellings LlamaConfig still accepts.
LLAMA_LEGACY_FIELDS = {"rope_theta", "rope_scaling"}
# Bookkeeping fields: the converted config writes its own.
METADATA_FIELDS = {"_name_or_path", "architectures", "model_type", "transformers_version", "torch_dtype", "dtype"}


# field -> (the values the port can honour, the original's default when the field is absent, why only those)
SUPPORTED_SETTINGS = {
    "mm_projector_type": (("mlp2x_gelu",), "linear", "the port's projector is LLaVA-1.5's Linear-GELU-Linear"),
    "mm_use_im_start_end": ((False, None), False, "image start/end tokens are not supported by the port"),
    "mm_vision_select_feature": (("patch",), "patch", "the fuser works on the square patch grid without the CLS token"),
    "mm_patch_merge_type": (("flat",), "flat", "the port feeds one square image, as LLaVA-1.5's 'flat'"),
    "image_aspect_ratio": (
        ("pad",), "square", "the port's processor pads images to a square (LLaVA-1.5's 'pad'); another setting would "
        "change the preprocessing the model was trained with"
    ),
}
TRANSLATED_FIELDS = {"mm_vision_select_layer", "mm_vision_tower", "mm_hidden_size"}


def check_supported_settings(original: dict[str, Any]) -> None:
    for field, (allowed, default, why) in SUPPORTED_SETTINGS.items():
        value = original.get(field, default)
        if value not in allowed:
            raise ConversionError(f"{field} is {value!r}{'' if field in original else ' (absent)'}: {why}")


@dataclass(frozen=True)
class OriginalSettings:
    """What the original config says, checked: the vision layers, the vision tower's name, the Llama fields."""

    key_value_layers: tuple[int, ...]
    query_layer: int
    vision_tower: str | None
    vision_hidden_size: int | None
    llama_fields: dict[str, Any]
    dtype: str | None

    def llama_config(self, **overrides) -> LlamaConfig:
        return LlamaConfig(**{**self.llama_fields, **overrides})

    @classmethod
    def from_config(cls, original: dict[str, Any]) -> "OriginalSettings":
        model_type = original.get("model_type")
        if model_type not in ORIGINAL_MODEL_TYPES:
            raise ConversionError(
                f"model_type is {model_type!r}: the converter reads the authors' LLaVA-Llama checkpoints "
                f"(model_type one of {ORIGINAL_MODEL_TYPES})"
            )
        check_supported_settings(original)
        layers = parse_select_layers(original.get("mm_vision_select_layer"))
        if len(layers) > ORIGINAL_KEY_VALUE_LEVELS + 1:
            logger.warning(
                "mm_vision_select_layer %s: the original block reads only the first %d layers and the last; "
                "%s are unused, as in the original",
                layers, ORIGINAL_KEY_VALUE_LEVELS, layers[ORIGINAL_KEY_VALUE_LEVELS:-1],
            )
        llama_field_names = {field.name for field in dataclasses.fields(LlamaConfig)} | LLAMA_LEGACY_FIELDS
        # Generic config fields and the generation defaults transformers 4 kept in model configs (e.g. max_length) are
        # known but not carried over: the converted generation_config.json holds the token ids only.
        known = (
            llama_field_names | set(TRAINING_FIELDS) | METADATA_FIELDS | set(SUPPORTED_SETTINGS) | TRANSLATED_FIELDS
            | set(PretrainedConfig().to_dict()) | set(GenerationConfig().to_dict())
        )
        unknown = sorted(set(original) - known)
        if unknown:
            raise ConversionError(f"the original config has fields the converter does not know: {unknown}")
        return cls(
            key_value_layers=tuple(layers[:ORIGINAL_KEY_VALUE_LEVELS]),
            query_layer=layers[-1],
            vision_tower=original.get("mm_vision_tower"),
            vision_hidden_size=original.get("mm_hidden_size"),
            llama_fields={
                key: value for key, value in original.items()
                # rope_scaling None is the legacy spelling of "no scaling"
                if key in llama_field_names - METADATA_FIELDS and not (key == "rope_scaling" and value is None)
            },
            dtype=original.get("dtype") or original.get("torch_dtype"),
        )


def parse_select_layers(value: Any) -> list[int]:
    """`mm_vision_select_layer` as a list: the training scripts' string form "list-22/-17/-12/-7/-2" or a list."""
    if isinstance(value, str) and value.startswith("list"):
        try:
            value = [int(part) for part in value[len("list") :].split("/")]
        except ValueError:
            raise ConversionError(
                f"mm_vision_select_layer {value!r} is not of the form 'list-22/-17/-12/-7/-2'"
            ) from None
    if not isinstance(value, list) or not all(type(index) is int for index in value):  # bool is not a layer
        raise ConversionError(
            f"mm_vision_select_layer is {value!r}: an MMFuser checkpoint selects a list of layers (e.g. "
            "'list-22/-17/-12/-7/-2'); a single layer is plain LLaVA, which has no fuser"
        )
    if len(value) < ORIGINAL_KEY_VALUE_LEVELS:
        raise ConversionError(
            f"mm_vision_select_layer {value} names {len(value)} layers; the original block reads "
            f"{ORIGINAL_KEY_VALUE_LEVELS} key/value layers and the last as the query"
        )
    return value


def build_config(
    settings: OriginalSettings, vision_config: CLIPVisionConfig, tokenizer: PreTrainedTokenizerBase, dtype: str
) -> MMFuserLlavaConfig:
    """The converted config; `tokenizer` has been through `prepare_tokenizer` (its length is the new vocabulary)."""
    if settings.vision_hidden_size is not None and settings.vision_hidden_size != vision_config.hidden_size:
        raise ConversionError(
            f"mm_hidden_size is {settings.vision_hidden_size} but the vision tower's hidden size is "
            f"{vision_config.hidden_size}: wrong --vision-tower?"
        )
    text_config = settings.llama_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    grid = vision_config.image_size // vision_config.patch_size
    try:
        config = MMFuserLlavaConfig(
            vision_config=vision_config.to_dict(),
            text_config=text_config.to_dict(),
            image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
            image_seq_length=grid * grid,
            vision_feature_layer=settings.query_layer,
            fuser_key_value_layers=settings.key_value_layers,
            vision_feature_select_strategy="default",
            projector_hidden_act="gelu",
            multimodal_projector_bias=True,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=text_config.tie_word_embeddings,
        )
    except ValueError as error:
        raise ConversionError(f"the original settings do not fit the vision tower: {error}") from None
    config.dtype = dtype
    return config


__all__ = ["OriginalSettings", "TRAINING_FIELDS", "build_config", "check_supported_settings", "parse_select_layers"]
