"""Convert a checkpoint of the authors' code (original LLaVA layout) into a Hub-ready MMFuser-LLaVA folder.

Streaming: the model is built on the meta device only (for its config, code files and the expected names and
shapes); the weights go from the source shards to the output shards one tensor at a time (see `shards` and
`shard_writer`), so memory stays near one output shard whatever the model size. The output is staged beside OUT and
moved into place only when complete.
"""

import json
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer, CLIPVisionConfig, PreTrainedTokenizerBase, ProcessorMixin
from transformers.utils.hub import convert_file_size_to_int

from ..hub_folder import staged_output
from ..modeling_mmfuser_llava import MMFuserLlavaForConditionalGeneration
from ..processing import build_processor, prepare_tokenizer
from .errors import ConversionError
from .hub_files import write_model_files
from .key_mapping import VISION_TOWER_PREFIX, NameMapping, map_original_names, map_vision_tower_names
from .model_card import ModelCardInfo, build_model_card, with_default_base_model
from .new_token_rows import fill_mean_rows
from .original_config import OriginalSettings, build_config
from .shard_writer import PlannedTensor, write_safetensors_shards
from .shards import DEFAULT_RELEASE_BYTES, CheckpointReader
from .sources import resolve_folder
from .vision_preprocessing import check_vision_preprocessing


DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# Rows are added to these for the tokens the converted tokenizer adds.
VOCABULARY_MATRICES = ("model.language_model.embed_tokens.weight", "lm_head.weight")
CHECKPOINT_PATTERNS = ["*.json", "*.model", "*.safetensors", "*.bin"]
VISION_CONFIG_PATTERNS = ["*.json"]


@dataclass
class ConversionSummary:
    output_dir: Path
    tensors: int
    bytes: int
    seconds: float
    shards: list[str]
    vision_weights_from: str
    added_tokens: list[str]
    dropped: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        reasons = sorted(set(self.dropped.values()))
        return "\n".join([
            f"wrote {self.output_dir}",
            f"  {self.tensors} tensors, {self.bytes / 1e9:.3f} GB in {len(self.shards)} shard(s), "
            f"{self.seconds:.1f} s ({self.bytes / 1e6 / max(self.seconds, 1e-9):.0f} MB/s)",
            f"  vision weights from {self.vision_weights_from}",
            f"  tokens added: {', '.join(self.added_tokens) or 'none'}",
            f"  source tensors dropped: {len(self.dropped)}" + (f" ({'; '.join(reasons)})" if reasons else ""),
        ])


def load_original_tokenizer(
    folder: Path, settings: OriginalSettings, vocabulary_rows: int
) -> tuple[PreTrainedTokenizerBase, list[str]]:
    """The checkpoint's Llama tokenizer with `<image>` (and `<pad>` if it had no pad token) added and the original's
    chunked tokenization set up by `prepare_tokenizer`; the added tokens."""
    try:
        # config: the original's model_type is unknown to AutoConfig
        tokenizer = AutoTokenizer.from_pretrained(folder, config=settings.llama_config())
    except (OSError, ValueError) as error:
        raise ConversionError(f"cannot load the tokenizer of {folder}: {error}") from None
    if len(tokenizer) != vocabulary_rows:
        raise ConversionError(
            f"the tokenizer of {folder} has {len(tokenizer)} tokens but embed_tokens has {vocabulary_rows} rows"
        )
    before = set(tokenizer.get_vocab())
    prepare_tokenizer(tokenizer)
    added = [token for token in tokenizer.get_vocab() if token not in before]
    added.sort(key=tokenizer.convert_tokens_to_ids)
    return tokenizer, added


def _output_dtype(requested: str | None, settings: OriginalSettings, source: CheckpointReader) -> torch.dtype:
    name = requested or settings.dtype
    if name is None:
        return next(info.dtype for info in source.tensors.values() if info.dtype.is_floating_point)
    if name not in DTYPES:
        raise ConversionError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def _load(reader: CheckpointReader, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """The named source tensor as a new `dtype` tensor of `shape`."""
    tensor = torch.empty(shape, dtype=dtype)
    source_shape = reader.tensors[name].shape
    if source_shape == shape:
        reader.copy_into(name, tensor)
    else:  # a vocabulary matrix: the source rows, then mean rows for the added tokens
        reader.copy_into(name, tensor[: source_shape[0]])
        fill_mean_rows(tensor, source_shape[0])
    return tensor


def plan_tensors(
    sources: list[tuple[CheckpointReader, NameMapping]],
    expected: dict[str, tuple[int, ...]],
    dtype: torch.dtype,
) -> list[PlannedTensor]:
    """One planned output tensor per mapped source tensor, checked against the model's names and shapes.

    Missing, unexpected or mis-shaped tensors are an error listing them; the vocabulary matrices get mean rows for the
    added tokens. The plan follows `expected`'s order (the model's `state_dict`), so that the shards are the ones
    `save_pretrained` writes.
    """
    planned: dict[str, PlannedTensor] = {}
    mis_shaped: dict[str, str] = {}
    for reader, mapping in sources:
        for source_name, target in mapping.mapped.items():
            if target in planned:
                raise ConversionError(f"two source tensors map to {target}, the second is {source_name}")
            info = reader.tensors[source_name]
            shape = expected.get(target, info.shape)
            grows = target in VOCABULARY_MATRICES and shape[1:] == info.shape[1:] and shape[0] >= info.shape[0]
            if shape != info.shape and not grows:
                mis_shaped[target] = f"{source_name} {list(info.shape)} -> {target} {list(shape)}"
                continue
            out_dtype = dtype if info.dtype.is_floating_point else info.dtype
            load = partial(_load, reader, source_name, shape, out_dtype)
            planned[target] = PlannedTensor(target, shape, out_dtype, load)
    problems = [
        f"{label}: {names[:20]}{' ...' if len(names) > 20 else ''}"
        for label, names in (
            ("missing from the checkpoint", sorted(set(expected) - set(planned) - set(mis_shaped))),
            ("not part of the model", sorted(set(planned) - set(expected))),
            ("of the wrong shape (source -> model)", sorted(mis_shaped.values())),
        )
        if names
    ]
    if problems:
        raise ConversionError("the checkpoint does not fit the converted model; tensors " + "; tensors ".join(problems))
    return [planned[name] for name in expected]


@dataclass
class ConversionPlan:
    """Everything decided before any weight is read: the converted model (on meta), its processor and tensor plan."""

    model: MMFuserLlavaForConditionalGeneration
    processor: ProcessorMixin
    tensors: list[PlannedTensor]
    sources: list[tuple[CheckpointReader, NameMapping]]
    vision_tower: str
    vision_weights_from: str
    added_tokens: list[str]


def plan_conversion(
    checkpoint: str | Path,
    vision_tower: str | Path | None = None,
    dtype: str | None = None,
    release_bytes: int = DEFAULT_RELEASE_BYTES,
) -> ConversionPlan:
    """Read the checkpoint's config, tokenizer and shard headers, and check that everything fits; reads no weights."""
    source_folder = resolve_folder(checkpoint, CHECKPOINT_PATTERNS)
    config_path = source_folder / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"{source_folder} has no config.json")
    settings = OriginalSettings.from_config(json.loads(config_path.read_text()))
    source = CheckpointReader(source_folder, release_bytes)
    source_names = map_original_names(list(source.tensors), str(source_folder))
    has_vision_weights = any(name.startswith(VISION_TOWER_PREFIX) for name in source_names.mapped.values())

    vision_name = str(vision_tower or settings.vision_tower or "")
    if not vision_name:
        raise ConversionError("the config names no mm_vision_tower: pass the CLIP checkpoint with --vision-tower")
    vision_folder = resolve_folder(vision_name, VISION_CONFIG_PATTERNS if has_vision_weights else CHECKPOINT_PATTERNS)
    try:
        vision_config = CLIPVisionConfig.from_pretrained(vision_folder)
    except (OSError, ValueError) as error:
        raise ConversionError(f"cannot read a CLIP vision config from {vision_folder}: {error}") from None
    sources = [(source, source_names)]
    if not has_vision_weights:
        vision_reader = CheckpointReader(vision_folder, release_bytes)
        sources.append((vision_reader, map_vision_tower_names(list(vision_reader.tensors), str(vision_folder))))

    embed_info = source.tensors.get("model.embed_tokens.weight")
    if embed_info is None:
        raise ConversionError(f"{source_folder} has no model.embed_tokens.weight: not an original LLaVA checkpoint")
    tokenizer, added_tokens = load_original_tokenizer(source_folder, settings, embed_info.shape[0])
    out_dtype = _output_dtype(dtype, settings, source)
    config = build_config(settings, vision_config, tokenizer, str(out_dtype).removeprefix("torch."))
    processor = build_processor(tokenizer, vision_config.image_size, vision_config.patch_size)
    check_vision_preprocessing(vision_folder, processor.image_processor)

    with torch.device("meta"):
        model = MMFuserLlavaForConditionalGeneration(config)
    for token in ("bos", "eos", "pad"):
        setattr(model.generation_config, f"{token}_token_id", getattr(tokenizer, f"{token}_token_id"))
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    return ConversionPlan(
        model=model,
        processor=processor,
        tensors=plan_tensors(sources, expected, out_dtype),
        sources=sources,
        vision_tower=vision_name,
        vision_weights_from="the checkpoint" if has_vision_weights else str(vision_folder),
        added_tokens=added_tokens,
    )


def convert_checkpoint(
    checkpoint: str | Path,
    output_dir: str | Path,
    vision_tower: str | Path | None = None,
    dtype: str | None = None,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
    card: ModelCardInfo | None = None,
    progress: bool = True,
    release_bytes: int | None = None,
) -> ConversionSummary:
    """Convert the original-layout `checkpoint` (folder or Hub id) into a Hub-ready folder `output_dir`.

    `vision_tower` (folder or Hub id; default: the config's `mm_vision_tower`) supplies the vision config, and the
    vision weights when the checkpoint has none. `dtype` defaults to the checkpoint's. Nothing is left at
    `output_dir` unless the conversion completes. The source files are unmapped after every `release_bytes` read
    (default: 256 MiB, at most a quarter of `max_shard_size`), which bounds their share of memory.
    """
    start = time.perf_counter()
    try:
        max_shard_size = convert_file_size_to_int(max_shard_size)
    except ValueError:
        raise ConversionError(f"max_shard_size must be bytes or a size such as '5GB', got {max_shard_size!r}") from None
    if release_bytes is None:
        release_bytes = min(DEFAULT_RELEASE_BYTES, max_shard_size // 4)
    with staged_output(output_dir, overwrite) as staging:
        plan = plan_conversion(checkpoint, vision_tower, dtype, release_bytes)
        write_model_files(plan.model, plan.processor, staging)
        total = sum(tensor.nbytes for tensor in plan.tensors)
        with tqdm(total=total, unit="B", unit_scale=True, desc="Converting", disable=not progress) as bar:
            written = write_safetensors_shards(plan.tensors, staging, max_shard_size, lambda t: bar.update(t.nbytes))
        for reader, _ in plan.sources:
            reader.close()
        card = with_default_base_model(card, plan.vision_tower)
        provenance = (
            f"Converted with `mmfuser-llava convert` from a checkpoint of the authors' code (LLaVA layout); vision "
            f"tower `{plan.vision_tower}`, vision weights from {plan.vision_weights_from}."
        )
        build_model_card(card, plan.model.config, provenance, Path(output_dir).name).save(staging / "README.md")
    return ConversionSummary(
        output_dir=Path(output_dir),
        tensors=written.tensors,
        bytes=written.bytes,
        seconds=time.perf_counter() - start,
        shards=written.files,
        vision_weights_from=plan.vision_weights_from,
        added_tokens=plan.added_tokens,
        dropped={name: reason for _, mapping in plan.sources for name, reason in mapping.dropped.items()},
    )


__all__ = [
    "ConversionPlan",
    "ConversionSummary",
    "convert_checkpoint",
    "load_original_tokenizer",
    "plan_conversion",
    "plan_tensors",
]
