"""The LLaVA JSON data: a lazy dataset over a shared Arrow cache, the collator for mixed batches, modality grouping.

A JSON (or JSONL) file in LLaVA's layout is checked and turned into an Arrow table once, in a cache keyed on the
file's bytes; every process then memory-maps that table, so a node's processes share its pages instead of each
holding the whole file as Python objects (3 GB per process for the 665K mix).
"""

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
from datasets.arrow_writer import ArrowWriter
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler
from transformers import LlavaProcessor

from ..processing import IMAGE_TOKEN
from .conversation import FORMATTERS, IGNORE_INDEX, Conversation, InvalidSampleError, encode, parse_record

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the table's columns or the checks change: older caches are then rebuilt
TABLE_FILE = "samples.arrow"
BUILD_BATCH = 10_000
SAMPLE_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "image": datasets.Value("string"),
        "conversations": [{"from": datasets.Value("string"), "value": datasets.Value("string")}],
        "modality_length": datasets.Value("int32"),
    }
)


class OverlongSampleError(InvalidSampleError):
    """A sample that does not fit `model_max_length` without breaking it."""


def modality_length(sample: Conversation) -> int:
    """Word count as the original estimates it: positive for a sample with an image, negative without."""
    words = max(sum(len(text.split()) for _, text in sample.turns), 1)
    return words if sample.image is not None else -words


def table_modality_lengths(samples: datasets.Dataset) -> list[int]:
    """The `modality_length` column as a list, read from the memory-mapped table (no sample is tokenized)."""
    return samples.with_format("arrow")["modality_length"].to_pylist()


def read_records(data_path: Path) -> Iterator[object]:
    """The file's entries: a JSON list, or one JSON object per line for `.jsonl`."""
    if data_path.suffix == ".jsonl":
        with open(data_path) as file:
            for line_number, line in enumerate(file, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as error:
                        raise InvalidSampleError(f"{data_path}, line {line_number}: not JSON: {error}") from None
        return
    with open(data_path) as file:
        records = json.load(file)
    if not isinstance(records, list):
        raise ValueError(f"{data_path} must hold a JSON list of samples (or be a .jsonl file, one sample a line)")
    yield from records


def checked_rows(data_path: Path, version: str) -> Iterator[dict]:
    """Each entry checked as the original format needs (`InvalidSampleError` naming the file, entry, id and field)."""
    for index, record in enumerate(read_records(data_path)):
        try:
            sample = parse_record(record, index, version)
        except InvalidSampleError as error:
            raise InvalidSampleError(f"{data_path}: {error}") from None
        yield {
            "id": sample.sample_id,
            "image": sample.image,
            "conversations": [{"from": speaker, "value": text} for speaker, text in sample.turns],
            "modality_length": modality_length(sample),
        }


def file_digest(path: Path) -> str:
    """sha256 of the file's bytes: a copy with the same content reuses the cache, any edit (even one keeping the size
    and modification time, as `rsync -t` or a restored backup can) builds a new one."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def write_table(rows: Iterable[dict], path: Path) -> int:
    with ArrowWriter(features=SAMPLE_FEATURES, path=str(path)) as writer:
        batch: list[dict] = []
        for row in rows:
            batch.append(row)
            if len(batch) == BUILD_BATCH:
                writer.write_batch({name: [row[name] for row in batch] for name in SAMPLE_FEATURES})
                batch = []
        if batch:
            writer.write_batch({name: [row[name] for row in batch] for name in SAMPLE_FEATURES})
        count, _ = writer.finalize()
    return count


def default_cache_dir() -> Path:
    return Path(datasets.config.HF_DATASETS_CACHE) / "mmfuser-llava"


def cached_samples(data_path: str | Path, version: str, cache_dir: str | Path | None = None) -> datasets.Dataset:
    """The checked samples of a LLaVA JSON/JSONL file as a memory-mapped `datasets.Dataset`, built on first use.

    The cache folder is named by the file's sha256, the conversation format and `CACHE_FORMAT`. A build writes into
    a temporary folder renamed into place once complete, so a killed build leaves nothing a later run reads. Build
    it in one process first (`TrainingArguments.main_process_first`); the others then only hash and memory-map.
    """
    data_path = Path(data_path)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = cache_dir / f"{data_path.stem}-{file_digest(data_path)[:32]}-{version}-f{CACHE_FORMAT}"
    if not (folder / TABLE_FILE).is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=cache_dir))
        try:
            count = write_table(checked_rows(data_path, version), staging / TABLE_FILE)
            os.chmod(staging, 0o755)
            try:
                os.rename(staging, folder)
            except OSError:
                if not (folder / TABLE_FILE).is_file():  # not another process finishing the same build first
                    raise
            logger.info("checked %d samples of %s into %s", count, data_path, folder)
        finally:
            if staging.exists():
                for leftover in staging.iterdir():
                    leftover.unlink()
                staging.rmdir()
    return datasets.Dataset.from_file(str(folder / TABLE_FILE))


class SampleEncoder:
    """Samples -> training items: ids and labels in the conversation format, cut to `model_max_length`, pixels.

    A sample that `model_max_length` would cut inside its image tokens, or strip of every supervised token, raises
    `OverlongSampleError`.
    """

    def __init__(self, processor: LlavaProcessor, image_seq_length: int, model_max_length: int, version: str = "v1"):
        tokenizer = processor.tokenizer
        if not tokenizer.is_fast:
            raise ValueError("training needs a tokenizer with character offsets (a tokenizers-backed tokenizer)")
        self.processor = processor
        self.format = FORMATTERS[version]
        self.version = version
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.image_seq_length = image_seq_length
        self.model_max_length = model_max_length

    def encode(self, sample: Conversation) -> tuple[list[int], list[int]]:
        """Ids and labels cut to `model_max_length`; `OverlongSampleError` when the cut would break the sample."""
        input_ids, labels = encode(self.format(sample), self.processor.tokenizer, self.image_token_id,
                                   self.image_seq_length)
        if len(input_ids) > self.model_max_length:
            if self.image_token_id in input_ids[self.model_max_length :]:
                raise OverlongSampleError(
                    f"sample {sample.sample_id!r}: {len(input_ids)} tokens; cutting to model_max_length="
                    f"{self.model_max_length} would cut into its {self.image_seq_length} image tokens. Raise "
                    "--model_max_length, shorten the sample, or pass --skip_overlong_samples"
                )
            input_ids, labels = input_ids[: self.model_max_length], labels[: self.model_max_length]
        if all(label == IGNORE_INDEX for label in labels):
            raise OverlongSampleError(
                f"sample {sample.sample_id!r}: no answer token is left within model_max_length="
                f"{self.model_max_length}. Raise --model_max_length or pass --skip_overlong_samples"
            )
        return input_ids, labels

    def item(self, sample: Conversation, image: Image.Image | None) -> dict[str, torch.Tensor]:
        input_ids, labels = self.encode(sample)
        item = {"input_ids": torch.tensor(input_ids), "labels": torch.tensor(labels)}
        if image is not None:
            item["pixel_values"] = self.processor.image_processor(image, return_tensors="pt")["pixel_values"]
        return item

    def fitting_rows(self, samples: datasets.Dataset, conversation) -> tuple[list[int], list[str]]:
        """Rows of `samples` whose `conversation(row)` fits `model_max_length` (text tokenized, no image read), and
        the ids of the others, logged."""
        kept, skipped = [], []
        for index in range(len(samples)):
            sample = conversation(index)
            try:
                self.encode(sample)
                kept.append(index)
            except OverlongSampleError:
                skipped.append(sample.sample_id)
        logger.warning(
            "skipped %d of %d samples that do not fit model_max_length=%d%s",
            len(skipped),
            len(samples),
            self.model_max_length,
            f" (first ids: {skipped[:5]})" if skipped else "",
        )
        return kept, skipped


def open_image(path: Path, sample: Conversation) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise InvalidSampleError(f"sample {sample.sample_id!r}: image {path} does not exist") from None
    except (UnidentifiedImageError, OSError) as error:
        raise InvalidSampleError(f"sample {sample.sample_id!r}: cannot read image {path}: {error}") from error


class LazySupervisedDataset(Dataset):
    """LLaVA-format samples, checked once into a shared Arrow cache; tokenized and their images loaded when fetched.

    With `skip_overlong_samples` all samples are tokenized (text only) up front and those that do not fit
    `model_max_length` are left out, their ids kept in `skipped_sample_ids`.
    """

    def __init__(
        self,
        data_path: str | Path,
        processor: LlavaProcessor,
        image_seq_length: int,
        model_max_length: int,
        version: str = "v1",
        image_folder: str | Path | None = None,
        skip_overlong_samples: bool = False,
        cache_dir: str | Path | None = None,
    ):
        self.encoder = SampleEncoder(processor, image_seq_length, model_max_length, version)
        self.samples = cached_samples(data_path, version, cache_dir)
        if image_folder is None and any(length > 0 for length in self.modality_lengths):
            raise ValueError(f"{data_path} has samples with images: pass --image_folder")
        self.image_folder = Path(image_folder) if image_folder is not None else None
        self.skipped_sample_ids: list[str] = []
        if skip_overlong_samples:
            kept, self.skipped_sample_ids = self.encoder.fitting_rows(self.samples, self.conversation)
            self.samples = self.samples.select(kept)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def modality_lengths(self) -> list[int]:
        """Word counts as the original estimates them (positive with an image, negative without): a table column."""
        return table_modality_lengths(self.samples)

    def conversation(self, index: int) -> Conversation:
        row = self.samples[index]
        turns = tuple((turn["from"], turn["value"]) for turn in row["conversations"])
        return Conversation(row["id"], turns, row["image"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.conversation(index)
        image = open_image(self.image_folder / sample.image, sample) if sample.image is not None else None
        return self.encoder.item(sample, image)


@dataclass
class SupervisedCollator:
    """Right-pads ids (pad token) and labels (IGNORE_INDEX); stacks the images of the samples that have one.

    Llava fills image tokens with image features in order, so the images go in the batch's sample order; a batch of
    text-only samples has no `pixel_values`.
    """

    pad_token_id: int

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        input_ids = torch.nn.utils.rnn.pad_sequence(
            [item["input_ids"] for item in items], batch_first=True, padding_value=self.pad_token_id
        )
        labels = torch.nn.utils.rnn.pad_sequence(
            [item["labels"] for item in items], batch_first=True, padding_value=IGNORE_INDEX
        )
        lengths = torch.tensor([len(item["input_ids"]) for item in items])
        batch = {
            "input_ids": input_ids,
            "attention_mask": torch.arange(input_ids.shape[1]) < lengths[:, None],
            "labels": labels,
        }
        images = [item["pixel_values"] for item in items if "pixel_values" in item]
        if images:
            batch["pixel_values"] = torch.cat(images)
        return batch


class ModalityLengthGroupedSampler(Sampler[int]):
    """LLaVA's `group_by_modality_length` order: whole batches of image samples or of text-only samples.

    Each modality is shuffled and cut into mega-batches of `batch_size * world_size` samples (one optimizer step over
    all processes), sorted by length inside so that each batch holds samples of similar length (less padding).
    Mega-batches are then shuffled together; the two incomplete ones, merged, go last. Seeded by `seed` and the epoch,
    so every process and a resumed run see the same order.
    """

    def __init__(self, modality_lengths: list[int], batch_size: int, world_size: int, seed: int = 0):
        if any(length == 0 for length in modality_lengths):
            raise ValueError("modality lengths must be non-zero: positive with an image, negative without")
        self.lengths = modality_lengths
        self.megabatch_size = batch_size * world_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        megabatches, leftovers = [], []
        for with_image in (True, False):
            indices = [index for index, length in enumerate(self.lengths) if (length > 0) == with_image]
            shuffled = [indices[position] for position in torch.randperm(len(indices), generator=generator)]
            for start in range(0, len(shuffled), self.megabatch_size):
                chunk = sorted(shuffled[start : start + self.megabatch_size], key=lambda i: -abs(self.lengths[i]))
                (megabatches if len(chunk) == self.megabatch_size else leftovers).append(chunk)
        order = torch.randperm(len(megabatches), generator=generator).tolist()
        ordered = [megabatches[position] for position in order] + [sorted(sum(leftovers, []))]
        return iter([index for megabatch in ordered for index in megabatch])


__all__ = [
    "LazySupervisedDataset",
    "cached_samples",
    "modality_length",
    "open_image",
    "table_modality_lengths",
    "ModalityLengthGroupedSampler",
    "OverlongSampleError",
    "SampleEncoder",
    "SupervisedCollator",
]
