"""The training arguments, under the original LLaVA/MMFuser script names so that its commands and configs carry over.

`HfArgumentParser` reads the three dataclasses from a command line, a JSON or YAML file, or both (file first, then
the command line overrides it): see `parse_arguments`.
"""

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import transformers
from transformers import HfArgumentParser

DEFAULT_FUSER_LAYERS = "list-22/-17/-12/-7/-2"


def parse_vision_select_layer(value: str) -> tuple[tuple[int, ...], int]:
    """`"list-22/-17/-12/-7/-2"` (the original format) -> ((-22, -17, -12, -7), -2): key/value layers, query layer."""
    if not value.startswith("list"):
        raise ValueError(
            f"mm_vision_select_layer must list the fuser's layers as 'list<kv>/.../<query>' (e.g. "
            f"{DEFAULT_FUSER_LAYERS!r}); got {value!r}"
        )
    try:
        layers = [int(part) for part in value[len("list") :].split("/")]
    except ValueError:
        raise ValueError(f"mm_vision_select_layer holds a non-integer layer: {value!r}") from None
    if len(layers) < 2:
        raise ValueError(f"mm_vision_select_layer needs key/value layers and a query layer, got {value!r}")
    return tuple(layers[:-1]), layers[-1]


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        metadata={
            "help": "An MMFuser-LLaVA or Llava checkpoint (folder or Hub id), or a base Llama/Vicuna LLM; a base LLM "
            "needs --vision_tower and gets a freshly initialised fuser and projector."
        }
    )
    version: Literal["plain", "v1"] = field(
        default="v1", metadata={"help": "Conversation format: 'plain' (stage 1 captions) or 'v1' (vicuna_v1, stage 2)."}
    )
    vision_tower: str | None = field(
        default=None, metadata={"help": "CLIP checkpoint for the vision tower when building from a base LLM."}
    )
    mm_vision_select_layer: str | None = field(
        default=None,
        metadata={
            "help": f"Fuser layers as 'list<kv>/.../<query>' (default for a fresh model: {DEFAULT_FUSER_LAYERS}); "
            "with a checkpoint it must match the checkpoint's."
        },
    )
    fuser_fusion: str | None = field(
        default=None,
        metadata={"help": "For a new fuser: mmfuser (default), concat, average, weighted_average (paper, Table I), or "
                 "none (the query layer alone: the LLaVA-1.5 baseline)."},
    )
    fuser_attention_type: str | None = field(
        default=None,
        metadata={"help": "For a new MMFuser block: deformable (default), global, linear_sra (paper, Table VII)."},
    )
    fuser_sra_pool_size: int | None = field(
        default=None, metadata={"help": "For a new linear_sra block: side of the pooled key/value map (default 7)."}
    )
    fuser_self_attention: bool | None = field(
        default=None,
        metadata={"help": "For a new MMFuser block: False keeps the cross-attention alone (paper, Table VIII)."},
    )
    fuser_num_heads: int | None = field(
        default=None, metadata={"help": "For a new MMFuser block: attention heads (default 16, as the paper)."}
    )
    fuser_num_points: int | None = field(
        default=None, metadata={"help": "For a new MMFuser block: sampling points per head and layer (default 4)."}
    )
    pretrain_mm_mlp_adapter: str | None = field(
        default=None,
        metadata={"help": "Stage-1 output (mm_projector.safetensors: fuser + projector) to start stage 2 from."},
    )
    tune_mm_mlp_adapter: bool = field(
        default=False, metadata={"help": "Stage 1: train only the fuser and projector and save them as one file."}
    )
    freeze_backbone: bool = field(default=False, metadata={"help": "Keep the language model frozen."})
    unfreeze_vision_tower: bool = field(
        default=False, metadata={"help": "Train the vision tower too (it is frozen in both stages of the paper)."}
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "Attention backend of the language model: eager, sdpa, flash_attention_2."}
    )
    # Original flags whose only supported value is what the MMFuser scripts pass: accepted so their commands run.
    mm_projector_type: Literal["mlp2x_gelu"] = field(default="mlp2x_gelu", metadata={"help": "Fixed: mlp2x_gelu."})
    mm_vision_select_feature: Literal["patch"] = field(default="patch", metadata={"help": "Fixed: patch (no CLS)."})
    mm_use_im_start_end: bool = field(default=False, metadata={"help": "Fixed: False."})
    mm_use_im_patch_token: bool = field(default=False, metadata={"help": "Fixed: False."})

    def __post_init__(self):
        for flag in ("mm_use_im_start_end", "mm_use_im_patch_token"):
            if getattr(self, flag):
                raise ValueError(f"--{flag} True is not supported: MMFuser-LLaVA uses plain <image> tokens")
        if self.mm_vision_select_layer is not None:
            parse_vision_select_layer(self.mm_vision_select_layer)


@dataclass
class DataArguments:
    data_path: str | None = field(
        default=None,
        metadata={
            "help": "LLaVA-format JSON list of {id, image, conversations}, or JSONL (one sample a line). Checked once "
            "into an Arrow table under the datasets cache (keyed on the file's sha256), which every process "
            "memory-maps."
        }
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Instead of --data_path: a 🤗 dataset (Hub id, save_to_disk folder, or folder of parquet files) in "
            "TRL's VLM format (messages + images) or LLaVA's (id, conversations, image), told apart by its columns; "
            "pictures embedded or paths under --image_folder."
        },
    )
    dataset_split: str = field(default="train", metadata={"help": "The split of --dataset_name to train on."})
    messages_column: str | None = field(
        default=None, metadata={"help": "Conversation column of --dataset_name (default: messages or conversations)."}
    )
    image_column: str | None = field(
        default=None, metadata={"help": "Picture column of --dataset_name (default: images for messages, else image)."}
    )
    streaming: bool = field(
        default=False,
        metadata={"help": "Stream --dataset_name (an IterableDataset; needs --max_steps; no grouping or skipping)."},
    )
    image_folder: str | None = field(default=None, metadata={"help": "Folder the samples' image paths are under."})
    image_aspect_ratio: Literal["pad", "square"] = field(
        default="pad",
        metadata={"help": "'pad': pad to a square in the CLIP mean colour (LLaVA-1.5); 'square': centre crop."},
    )
    skip_overlong_samples: bool = field(
        default=False,
        metadata={
            "help": "Skip (and count) samples that model_max_length would cut inside their image tokens or strip of "
            "every answer token, instead of stopping with an error naming them. Costs one text-tokenization pass "
            "over the data at start."
        },
    )
    lazy_preprocess: bool = field(
        default=True, metadata={"help": "Accepted for the original scripts: samples are always processed lazily."}
    )

    def __post_init__(self):
        if (self.data_path is None) == (self.dataset_name is None):
            raise ValueError("give the training data as --data_path (LLaVA JSON/JSONL) or --dataset_name, one of them")
        if self.streaming and self.dataset_name is None:
            raise ValueError("--streaming reads --dataset_name; --data_path is memory-mapped from its Arrow cache")


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    """`transformers.TrainingArguments` plus the original script's additions."""

    model_max_length: int = field(
        default=2048, metadata={"help": "Longest sequence in tokens (image tokens included); longer ones are cut."}
    )
    ms_cross_attn_lr: float | None = field(
        default=None, metadata={"help": "Learning rate of the fuser (model.fuser.*); default: --learning_rate."}
    )
    group_by_modality_length: bool = field(
        default=False, metadata={"help": "Batches of image samples and of text-only samples, grouped by length."}
    )
    freeze_mm_mlp_adapter: bool = field(default=False, metadata={"help": "Keep the fuser and projector frozen."})
    lora_enable: bool = field(default=False, metadata={"help": "LoRA on the language model's linear layers."})
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_bias: Literal["none", "all", "lora_only"] = "none"
    bits: Literal[4, 8, 16] = field(
        default=16, metadata={"help": "4 or 8: QLoRA on a bitsandbytes-quantized language model (needs LoRA)."}
    )
    quant_type: Literal["nf4", "fp4"] = field(default="nf4", metadata={"help": "4-bit data type."})
    double_quant: bool = field(default=True, metadata={"help": "Quantize the 4-bit quantization constants too."})
    warmup_ratio: float | None = field(
        default=None, metadata={"help": "The original scripts' name for a fractional --warmup_steps."}
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep False: the collator builds the batch."})

    def __post_init__(self):
        if self.warmup_ratio is not None:
            if not 0 <= self.warmup_ratio < 1:
                raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
            if self.warmup_steps:
                raise ValueError("give --warmup_ratio or --warmup_steps, not both")
            self.warmup_steps = self.warmup_ratio
        if self.bits < 16 and not self.lora_enable:
            raise ValueError(f"--bits {self.bits} quantizes the language model, which can then only train through "
                             "LoRA: add --lora_enable True")
        if self.group_by_modality_length and self.train_sampling_strategy != "random":
            raise ValueError("--group_by_modality_length chooses the sampler; drop --train_sampling_strategy")
        super().__post_init__()


ARGUMENT_CLASSES = (ModelArguments, DataArguments, TrainingArguments)


def load_config_file(path: str | Path) -> dict:
    """A JSON or YAML mapping of argument names to values."""
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".json":
        config = json.loads(text)
    else:
        import yaml

        config = yaml.safe_load(text)
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a mapping of argument names to values")
    return config


def check_argument_combinations(model_args: ModelArguments, training_args: TrainingArguments) -> None:
    """Refuse settings that contradict each other across the dataclasses."""
    if training_args.lora_enable:
        if model_args.tune_mm_mlp_adapter or model_args.freeze_backbone:
            raise ValueError("--lora_enable adapts the language model: it contradicts --tune_mm_mlp_adapter and "
                             "--freeze_backbone, which keep it frozen")
        if model_args.unfreeze_vision_tower:
            raise ValueError("--unfreeze_vision_tower is not supported with --lora_enable (adapters go on the "
                             "language model only)")
    if model_args.tune_mm_mlp_adapter and training_args.freeze_mm_mlp_adapter:
        raise ValueError("--tune_mm_mlp_adapter trains the fuser and projector: it contradicts --freeze_mm_mlp_adapter")


def build_argument_parser(epilog: str | None = None) -> HfArgumentParser:
    return HfArgumentParser(
        ARGUMENT_CLASSES, prog="mmfuser-llava train", epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def parse_arguments(
    argv: list[str], epilog: str | None = None
) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """Parse `[CONFIG.yaml|CONFIG.json] [--name value ...]`: the file's values, overridden by the flags that follow."""
    parser = build_argument_parser(epilog)
    if argv and argv[0].endswith((".json", ".yaml", ".yml")):
        config = load_config_file(argv[0])
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"{argv[0]} sets unknown arguments: {', '.join(unknown)}")
        parser.set_defaults(**config)
        for action in parser._actions:
            if action.dest in config:
                action.required = False
        argv = argv[1:]
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    check_argument_combinations(model_args, training_args)
    return model_args, data_args, training_args


__all__ = [
    "DEFAULT_FUSER_LAYERS",
    "DataArguments",
    "ModelArguments",
    "TrainingArguments",
    "check_argument_combinations",
    "load_config_file",
    "parse_arguments",
    "parse_vision_select_layer",
]
