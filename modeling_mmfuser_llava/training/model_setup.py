"""The model to train: loaded from a checkpoint or assembled from a base LLM and a CLIP tower; frozen per stage.

Three starting points, told apart by the checkpoint's `model_type`:
- an MMFuser-LLaVA checkpoint: loaded as it is;
- a Llava checkpoint (e.g. llava-1.5-hf): its vision tower, projector and LLM, plus a new fuser (zero gates, so the
  model starts out exactly as the Llava it came from; for concatenation, the projector is widened to start so too);
- a base causal LM (Vicuna-v1.5) with `--vision_tower` (CLIP): a new fuser and projector, as in the paper's stage 1.
"""

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoProcessor,
    AutoTokenizer,
    BitsAndBytesConfig,
    CLIPVisionModel,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.modeling_utils import set_zero3_state

from ..configuration_mmfuser_llava import MMFuserLlavaConfig
from ..fusion_variants import build_fuser, build_projector
from ..modeling_mmfuser_llava import MMFuserLlavaForConditionalGeneration
from ..processing import IMAGE_TOKEN, build_processor, prepare_tokenizer
from .arguments import ModelArguments, parse_vision_select_layer

logger = logging.getLogger(__name__)

MM_PROJECTOR_FILE = "mm_projector.safetensors"
# Module paths (state-dict prefixes) of the model's parts.
VISION_TOWER = "model.vision_tower"
FUSER = "model.fuser"
PROJECTOR = "model.multi_modal_projector"
LANGUAGE_MODEL = "model.language_model"
LM_HEAD = "lm_head"
MM_ADAPTER_PARTS = (FUSER, PROJECTOR)  # the original's `mm_projector`: trained in stage 1, saved as one file
PARTS = {
    "vision_tower": (VISION_TOWER,),
    "fuser": (FUSER,),
    "projector": (PROJECTOR,),
    "language_model": (LANGUAGE_MODEL, LM_HEAD),
}


def in_part(name: str, prefixes: tuple[str, ...]) -> bool:
    """Whether parameter `name` (possibly under a PEFT wrapper's prefix) lies in one of the module paths."""
    return any(name.startswith(f"{prefix}.") or f".{prefix}." in name for prefix in prefixes)


def bitsandbytes_config(
    bits: int, quant_type: str, double_quant: bool, compute_dtype: torch.dtype, skip_modules: list[str]
) -> BitsAndBytesConfig:
    """QLoRA's quantization of the language model; `skip_modules` are anchored module paths kept in full precision."""
    return BitsAndBytesConfig(
        load_in_4bit=bits == 4,
        load_in_8bit=bits == 8,
        llm_int8_skip_modules=skip_modules,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_quant_type=quant_type,
    )


def load_model_and_processor(
    model_args: ModelArguments,
    dtype: torch.dtype = torch.float32,
    quantization: dict | None = None,
    device: str | torch.device = "cpu",
) -> tuple[MMFuserLlavaForConditionalGeneration, LlavaProcessor]:
    """The starting model and its processor (with `<image>` and a pad token); see the module docstring.

    `quantization` holds `bitsandbytes_config` keywords except the skip list, which is chosen here per source; a
    quantized model is placed on `device` (the Trainer does not move quantized models).
    """
    source = model_args.model_name_or_path
    model_type = AutoConfig.from_pretrained(source).model_type
    load_options = {"dtype": dtype}
    if model_args.attn_implementation is not None:
        load_options["attn_implementation"] = model_args.attn_implementation

    def quantized(skip_modules: list[str]) -> dict:
        if quantization is None:
            return {}
        config = bitsandbytes_config(**quantization, compute_dtype=dtype, skip_modules=skip_modules)
        return {"quantization_config": config, "device_map": {"": device}}

    full_model_skips = [VISION_TOWER, FUSER, PROJECTOR, LM_HEAD]
    if model_type == MMFuserLlavaConfig.model_type:
        with random_state_kept():
            model = MMFuserLlavaForConditionalGeneration.from_pretrained(
                source, **load_options, **quantized(full_model_skips)
            )
        keep_used_weight_conversions(model)
        check_fuser_settings(model.config, model_args)
        processor = AutoProcessor.from_pretrained(source)
        prepare_tokenizer(processor.tokenizer)
        return model, processor
    if model_type == "llava":
        with random_state_kept():
            llava = LlavaForConditionalGeneration.from_pretrained(
                source, **load_options, **quantized(full_model_skips)
            )
        parts = dict(
            vision_tower=llava.model.vision_tower,
            language_model=llava.model.language_model,
            lm_head=llava.lm_head,
            projector=llava.model.multi_modal_projector,
        )
        query_layer = llava.config.vision_feature_layer
    else:
        if model_args.vision_tower is None:
            raise ValueError(
                f"{source} is a {model_type!r} checkpoint, not an MMFuser-LLaVA or Llava one: building a new model "
                "from it as the language model needs --vision_tower (a CLIP checkpoint)"
            )
        with random_state_kept():
            llm = AutoModelForCausalLM.from_pretrained(source, **load_options, **quantized([LM_HEAD]))
            vision_tower = CLIPVisionModel.from_pretrained(model_args.vision_tower, dtype=dtype)
        parts = dict(vision_tower=vision_tower, language_model=llm.model, lm_head=llm.lm_head)
        query_layer = -2  # LLaVA-1.5's feature layer
    tokenizer = AutoTokenizer.from_pretrained(source)
    prepare_tokenizer(tokenizer)
    fuser_settings = fuser_overrides(model_args)
    if model_args.mm_vision_select_layer is not None:
        fuser_settings["fuser_key_value_layers"], query_layer = parse_vision_select_layer(
            model_args.mm_vision_select_layer
        )
    vision_config = parts["vision_tower"].config
    config = MMFuserLlavaConfig(
        vision_config=vision_config,
        text_config=parts["language_model"].config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=(vision_config.image_size // vision_config.patch_size) ** 2,
        vision_feature_layer=query_layer,
        pad_token_id=tokenizer.pad_token_id,
        **fuser_settings,
    )
    model = assemble_model(config, **parts)
    if quantization is not None:
        for part in (model.model.vision_tower, model.model.fuser, model.model.multi_modal_projector):
            part.to(device)
    resize_embeddings_for(model, tokenizer)
    set_generation_tokens(model, tokenizer)
    processor = build_processor(tokenizer, vision_config.image_size, vision_config.patch_size)
    return model, processor


@contextlib.contextmanager
def random_state_kept() -> Iterator[None]:
    """Loading leaves torch's random state (CPU and the current accelerator) as it found it, under every engine.

    Under ZeRO-3, `from_pretrained` initialises each weight at random inside `zero.Init` before loading it; elsewhere
    it draws nothing. What is initialised after loading (a new fuser and projector, LoRA adapters) then started from
    another state than under DDP or FSDP: ZeRO-3's LoRA run began from other adapters and ended 0.26 away from DDP's.
    """
    accelerator = torch.accelerator.current_accelerator()
    devices = [] if accelerator is None else [torch.accelerator.current_device_index()]
    device_type = "cuda" if accelerator is None else accelerator.type
    with torch.random.fork_rng(devices=devices, device_type=device_type):
        yield


def keep_used_weight_conversions(model: PreTrainedModel) -> None:
    """Forget the key renamings that loading did not apply, so that `save_pretrained` writes the model's own names.

    `save_pretrained` reverses the renamings recorded at load in `model._weight_conversions`. The ordinary loader keeps
    the ones that matched a key of the checkpoint; transformers' ZeRO-3 loader keeps the whole Llava mapping, and the
    saved file then held `model.language_model.model.*` and `model.vision_tower.vision_model.*` names.
    """
    conversions = getattr(model, "_weight_conversions", None)
    if conversions is not None:
        model._weight_conversions = [conversion for conversion in conversions if conversion.was_used()]


def fuser_overrides(model_args: ModelArguments) -> dict:
    """The fuser settings given for a new fuser: variant (paper, Tables I, VII and VIII), heads and points."""
    names = ("fuser_fusion", "fuser_attention_type", "fuser_sra_pool_size", "fuser_self_attention", "fuser_num_heads",
             "fuser_num_points")
    return {name: getattr(model_args, name) for name in names if getattr(model_args, name) is not None}


def check_fuser_settings(config: MMFuserLlavaConfig, model_args: ModelArguments) -> None:
    """A checkpoint's fuser is what it is: flags that would describe another one are refused, not ignored."""
    wanted = fuser_overrides(model_args)
    if model_args.mm_vision_select_layer is not None:
        key_value_layers, query_layer = parse_vision_select_layer(model_args.mm_vision_select_layer)
        wanted.update(fuser_key_value_layers=key_value_layers, vision_feature_layer=query_layer)
    different = {name: value for name, value in wanted.items() if getattr(config, name) != value}
    if different:
        found = {name: getattr(config, name) for name in different}
        raise ValueError(f"the checkpoint's fuser differs from the flags: it has {found}, the flags ask {different}; "
                         "drop the flags")


def assemble_model(
    config: MMFuserLlavaConfig,
    vision_tower: nn.Module,
    language_model: nn.Module,
    lm_head: nn.Module,
    projector: nn.Module | None = None,
) -> MMFuserLlavaForConditionalGeneration:
    """An MMFuser-LLaVA around loaded parts, with a freshly initialised fuser (and projector when none is given).

    A given projector (a Llava's) is kept; concatenation gets a wider one that starts as it, see `widen_for_concat`.
    The skeleton is built on the meta device, so no memory or time goes into weights that are replaced at once. Under
    ZeRO-3, `set_zero3_state` keeps transformers from partitioning and initialising the skeleton's parts
    (`from_config` would run `zero.Init` on meta tensors); the loaded parts are partitioned already, and DeepSpeed
    partitions the new fuser and projector when it wraps the model.
    """
    with torch.device("meta"), set_zero3_state():
        model = MMFuserLlavaForConditionalGeneration(config)
    model.model.vision_tower = vision_tower
    model.model.language_model = language_model
    model.lm_head = lm_head
    dtype = language_model.get_input_embeddings().weight.dtype
    model.model.fuser = build_fuser(config)
    if projector is None:
        projector = build_projector(config)
        projector.apply(model._init_weights)
    elif config.fuser_fusion == "concat":
        projector = widen_for_concat(projector, config)
    model.model.fuser.apply(model._init_weights)
    model.model.fuser.to(dtype)
    model.model.multi_modal_projector = projector.to(dtype)
    left_on_meta = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if left_on_meta:
        raise RuntimeError(f"assembling the model left tensors without values: {left_on_meta[:5]}")
    return model


def widen_for_concat(projector: nn.Module, config: MMFuserLlavaConfig) -> nn.Module:
    """The concatenation projector that computes what `projector` (a Llava's) computes on the query layer alone.

    Concatenation puts the query layer last, so the last `vision hidden size` columns of `linear_1` take the Llava's
    weight and the key/value layers' columns start at zero; the bias and `linear_2` are the Llava's. Training thus
    starts from the Llava's pretrained projection instead of a random one.
    """
    wide = build_projector(config)
    query_columns = config.vision_config.hidden_size
    with gathered_for_update(list(projector.parameters())), torch.no_grad():
        wide.linear_1.weight.zero_()
        wide.linear_1.weight[:, -query_columns:] = projector.linear_1.weight
        wide.linear_1.bias.copy_(projector.linear_1.bias)
        wide.linear_2.load_state_dict(projector.linear_2.state_dict())
    return wide


def resize_embeddings_for(model: MMFuserLlavaForConditionalGeneration, tokenizer: PreTrainedTokenizerBase) -> None:
    """Grow the embeddings to the tokenizer's added tokens; new rows take the mean of the old ones.

    Deterministic on purpose: `merge-lora` rebuilds the same base model and must get the same rows back.
    """
    old_size = model.get_input_embeddings().num_embeddings  # not weight.shape: 0 for a ZeRO-3 partitioned weight
    if len(tokenizer) <= old_size:
        return
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    embeddings = [model.get_input_embeddings().weight, model.get_output_embeddings().weight]
    with gathered_for_update(embeddings), torch.no_grad():
        for embedding in embeddings:
            embedding[old_size:] = embedding[:old_size].mean(dim=0, keepdim=True)
    logger.info("added %d token(s) to the embeddings: %d -> %d", len(tokenizer) - old_size, old_size, len(tokenizer))


def gathered_for_update(parameters: list[nn.Parameter]) -> contextlib.AbstractContextManager:
    """Under DeepSpeed ZeRO-3 (the stage-2 config) weights are partitioned at load: gather them whole to use them."""
    if not is_deepspeed_zero3_enabled():
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(parameters, modifier_rank=0)


def set_trainable_parts(
    model: nn.Module,
    tune_mm_mlp_adapter: bool,
    freeze_backbone: bool = False,
    freeze_mm_mlp_adapter: bool = False,
    unfreeze_vision_tower: bool = False,
) -> None:
    """Stage 1 (`tune_mm_mlp_adapter`): fuser and projector only. Stage 2: fuser, projector and language model.

    The vision tower stays frozen unless `unfreeze_vision_tower`.
    """
    trained = list(MM_ADAPTER_PARTS)
    if not tune_mm_mlp_adapter:
        if freeze_mm_mlp_adapter:
            trained = []
        if not freeze_backbone:
            trained += PARTS["language_model"]
    if unfreeze_vision_tower:
        trained.append(VISION_TOWER)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(in_part(name, tuple(trained)))


def parameter_counts(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(trainable, total) parameters per part of the model; LoRA adapters are counted apart as "lora".

    A 4-bit weight counts its unpacked size, a ZeRO-3 partitioned one its whole size; PEFT's frozen originals of
    `modules_to_save` are not counted twice.
    """
    counts = {part: [0, 0] for part in [*PARTS, "lora"]}
    for name, parameter in model.named_parameters():
        if ".original_module." in name:
            continue
        part = "lora" if "lora_" in name else next(p for p, prefixes in PARTS.items() if in_part(name, prefixes))
        size = getattr(parameter, "ds_numel", None) or parameter.numel()  # ZeRO-3 partitions leave numel() == 0
        if type(parameter).__name__ == "Params4bit":  # two 4-bit values per byte of storage
            size *= 2 * parameter.element_size()
        counts[part][0] += size if parameter.requires_grad else 0
        counts[part][1] += size
    return {part: (trainable, total) for part, (trainable, total) in counts.items() if total}


def format_parameter_counts(counts: dict[str, tuple[int, int]]) -> str:
    lines = [f"{'part':<16}{'trainable':>16}{'total':>16}"]
    lines += [f"{part:<16}{trainable:>16,}{total:>16,}" for part, (trainable, total) in counts.items()]
    trainable, total = (sum(column) for column in zip(*counts.values()))
    lines.append(f"{'all':<16}{trainable:>16,}{total:>16,}")
    return "\n".join(lines)


def mm_adapter_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The fuser's and projector's entries of a model state dict, under the model's own key names."""
    weights = {key: value for key, value in state_dict.items() if in_part(key, MM_ADAPTER_PARTS)}
    if not weights or any(not key.startswith(MM_ADAPTER_PARTS) for key in weights):
        raise ValueError("expected the state dict of an unwrapped MMFuser-LLaVA with a fuser and a projector")
    return weights


def save_mm_adapter(state_dict: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Write the fuser and projector of `state_dict` as one safetensors file (stage 1's output): under a temporary
    name beside it, renamed once written, so that `path` is never a truncated file."""
    path = Path(path)
    weights = {key: value.detach().cpu().contiguous() for key, value in mm_adapter_state_dict(state_dict).items()}
    partial = path.with_name(f".{path.name}.partial")
    try:
        save_file(weights, str(partial), metadata={"format": "pt", "content": "MMFuser-LLaVA fuser + projector"})
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def load_mm_adapter(model: MMFuserLlavaForConditionalGeneration, path: str | Path) -> None:
    """Load a stage-1 file into the model's fuser and projector; every key must match, in name and shape."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: expected the {MM_PROJECTOR_FILE} that stage 1 writes (safetensors)")
    weights = load_file(str(path))
    # Shapes from the parameters themselves: under ZeRO-3 a partitioned parameter keeps its real one in `ds_shape`.
    parameters = dict(model.named_parameters())
    expected = {
        key: tuple(getattr(parameters.get(key), "ds_shape", None) or value.shape)
        for key, value in mm_adapter_state_dict(model.state_dict()).items()
    }
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    wrong_shapes = [key for key in expected if expected[key] != tuple(weights[key].shape)]
    if wrong_shapes:
        raise ValueError(f"{path} does not fit this model: other shapes for {wrong_shapes[:5]}")
    with gathered_for_update([parameters[key] for key in expected if key in parameters]):
        model.load_state_dict(weights, strict=False)


def set_generation_tokens(model: MMFuserLlavaForConditionalGeneration, tokenizer: PreTrainedTokenizerBase) -> None:
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(model.generation_config, name, getattr(tokenizer, name))


__all__ = [
    "MM_PROJECTOR_FILE",
    "assemble_model",
    "bitsandbytes_config",
    "format_parameter_counts",
    "load_mm_adapter",
    "load_model_and_processor",
    "mm_adapter_state_dict",
    "parameter_counts",
    "random_state_kept",
    "resize_embeddings_for",
    "save_mm_adapter",
    "set_generation_tokens",
    "set_trainable_parts",
]
