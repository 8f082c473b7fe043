"""Training data from 🤗 datasets: a Hub id, a `save_to_disk` folder or parquet files, map-style or streamed.

Two layouts, told apart by the conversation column's fields:
- TRL's VLM format: `messages` in transformers' chat format (`role`, `content` as a string or a list of
  `{"type": "text" | "image", ...}` parts) and `images`, a list of pictures (embedded, or paths under `--image_folder`);
- LLaVA's: `id`, `conversations` (`from`, `value`) and `image`, one picture (embedded as an Image feature, or a path).

Both become the `Conversation` the JSON path builds, checked by the same `parse_record`, so they give the same ids,
labels and masking.
"""

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets
import pyarrow
import pyarrow.compute
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, IterableDataset
from transformers import LlavaProcessor

from ..processing import IMAGE_TOKEN
from .conversation import GPT, HUMAN, Conversation, InvalidSampleError, parse_record
from .data import LazySupervisedDataset, SampleEncoder, SupervisedCollator, modality_length, open_image

ROLES = {"user": HUMAN, "assistant": GPT}
DEFAULT_COLUMNS = {"messages": "images", "conversations": "image"}  # conversation column -> its image column
EMBEDDED_SOURCE = "<embedded>"  # the record's `image` while the picture itself is in the row


def load_hub_dataset(name: str, split: str, streaming: bool = False) -> datasets.Dataset | datasets.IterableDataset:
    """A `save_to_disk` folder (`load_from_disk`), else whatever `load_dataset` reads: a Hub id, parquet/JSON files."""
    if Path(name, "dataset_info.json").is_file() or Path(name, "dataset_dict.json").is_file():
        loaded = datasets.load_from_disk(name)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"{name} has no split {split!r} (it has {sorted(loaded)}): pass --dataset_split")
            loaded = loaded[split]
        return loaded.to_iterable_dataset() if streaming else loaded
    return datasets.load_dataset(name, split=split, streaming=streaming)


class RowFormat:
    """How one layout's rows become LLaVA records: the columns to read and the conversion, detected from columns."""

    def __init__(self, features: datasets.Features, source: str, version: str, messages_column: str | None = None,
                 image_column: str | None = None):
        self.source, self.version = source, version
        self.messages_column = messages_column or next((name for name in DEFAULT_COLUMNS if name in features), None)
        if self.messages_column not in features:
            raise ValueError(
                f"{source} has columns {sorted(features)}: none is a conversation ({' or '.join(DEFAULT_COLUMNS)}); "
                "name it with --messages_column"
            )
        turn = features[self.messages_column]
        turn = turn.feature if isinstance(turn, datasets.List) else None
        fields = set(turn) if isinstance(turn, dict) else set()
        if {"role", "content"} <= fields:
            self.layout = "messages"
        elif {"from", "value"} <= fields:
            self.layout = "conversations"
        else:
            raise ValueError(f"{source}: column {self.messages_column!r} is not a list of chat messages (role, "
                             f"content) nor of LLaVA turns (from, value): {features[self.messages_column]}")
        self.image_column = image_column or DEFAULT_COLUMNS[self.layout]
        if self.image_column not in features:
            if image_column is not None:
                raise ValueError(f"{source} has no column {image_column!r} (columns: {sorted(features)})")
            self.image_column = None
        self.columns = [name for name in ("id", self.messages_column, self.image_column) if name in features]

    def images(self, row: dict) -> list:
        """The row's pictures (undecoded: {"bytes", "path"} or a path string)."""
        if self.image_column is None or row[self.image_column] is None:
            return []
        value = row[self.image_column]
        return list(value) if isinstance(value, list) else [value]

    def record(self, row: dict, index: int, image_count: int) -> dict:
        """The row as a LLaVA record; its picture, if any, stays in the row (`image` is a placeholder)."""
        record: dict = {"id": row["id"]} if row.get("id") is not None else {}
        if image_count > 1:
            raise InvalidSampleError(f"{self.where(row, index)}: {image_count} images in {self.image_column!r}; "
                                     "MMFuser-LLaVA trains on one image per sample")
        if image_count:
            record["image"] = EMBEDDED_SOURCE
        if self.layout == "conversations":
            return {**record, "conversations": row[self.messages_column]}
        turns = []
        for message in row[self.messages_column] or []:
            if message.get("role") not in ROLES:
                raise InvalidSampleError(f"{self.where(row, index)}: field {self.messages_column!r}: role "
                                         f"{message.get('role')!r} is not one of {sorted(ROLES)} (the 'v1' format "
                                         "has its own system prompt)")
            content = message.get("content")
            if isinstance(content, list):
                content = "\n".join(IMAGE_TOKEN if part.get("type") == "image" else part.get("text") or ""
                                    for part in content)
            turns.append({"from": ROLES[message["role"]], "value": content})
        return {**record, "conversations": turns}

    def where(self, row: dict, index: int) -> str:
        named = f"sample {row['id']!r} (row {index})" if row.get("id") is not None else f"row {index}"
        return f"{self.source}: {named}"

    def image_counts(self, samples: datasets.Dataset) -> list[int]:
        """Pictures per row, from the image column's Arrow data (no picture is read)."""
        if self.image_column is None:
            return [0] * len(samples)
        column = samples.with_format("arrow")[self.image_column]
        if pyarrow.types.is_list(column.type) or pyarrow.types.is_large_list(column.type):
            return pyarrow.compute.fill_null(pyarrow.compute.list_value_length(column), 0).to_pylist()
        return [int(valid) for valid in column.is_valid().to_pylist()]

    def conversation(self, row: dict, index: int, image_count: int | None = None) -> Conversation:
        """The row checked as a LLaVA record (`image_count`: its pictures, counted from the row if not given)."""
        image_count = len(self.images(row)) if image_count is None else image_count
        try:
            return parse_record(self.record(row, index, image_count), index, self.version)
        except InvalidSampleError as error:
            message = str(error)
            raise InvalidSampleError(message if message.startswith(self.source) else f"{self.source}: {message} "
                                     f"(field {self.messages_column!r})") from None

    def image(self, row: dict, index: int, sample: Conversation, image_folder: Path | None) -> Image.Image | None:
        images = self.images(row)
        if not images:
            return None
        picture = images[0]
        if isinstance(picture, str) or picture.get("bytes") is None:
            path = picture if isinstance(picture, str) else picture.get("path")
            if image_folder is None and not Path(path).is_absolute():
                raise InvalidSampleError(f"{self.where(row, index)}: image {path!r} is a path: pass --image_folder")
            return open_image(Path(image_folder or "/") / path, sample)
        try:
            with Image.open(io.BytesIO(picture["bytes"])) as image:
                return image.convert("RGB")
        except (UnidentifiedImageError, OSError) as error:
            raise InvalidSampleError(f"{self.where(row, index)}: its embedded image in {self.image_column!r} does "
                                     f"not decode: {error}") from error


class HubSupervisedDataset(Dataset):
    """A map-style 🤗 dataset in either layout; every row's text is checked at start, the lengths kept for grouping."""

    def __init__(self, samples: datasets.Dataset, row_format: RowFormat, encoder: SampleEncoder,
                 image_folder: str | Path | None = None, skip_overlong_samples: bool = False):
        self.row_format, self.encoder = row_format, encoder
        self.image_folder = Path(image_folder) if image_folder is not None else None
        samples = samples.select_columns(row_format.columns)
        # Rows read as stored (pictures as bytes/paths, decoded by `RowFormat.image` to name a bad one's row): a
        # cast to undecoded Image features would copy the whole dataset, pictures included, into its cache.
        self.samples = samples.with_format("arrow")
        text = samples.select_columns([name for name in row_format.columns if name != row_format.image_column])
        self.lengths = [
            modality_length(row_format.conversation(row, index, image_count))
            for index, (row, image_count) in enumerate(zip(text, row_format.image_counts(self.samples)))
        ]
        self.skipped_sample_ids: list[str] = []
        self.rows = list(range(len(self.samples)))
        if skip_overlong_samples:
            kept, self.skipped_sample_ids = encoder.fitting_rows(self.samples, self.conversation)
            self.rows, self.lengths = kept, [self.lengths[index] for index in kept]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def modality_lengths(self) -> list[int]:
        return self.lengths

    def row(self, index: int) -> dict:
        return self.samples[index].to_pylist()[0]

    def conversation(self, index: int) -> Conversation:
        return self.row_format.conversation(self.row(index), index)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row_index = self.rows[index]
        row = self.row(row_index)
        sample = self.row_format.conversation(row, row_index)
        return self.encoder.item(sample, self.row_format.image(row, row_index, sample, self.image_folder))


@dataclass(frozen=True)
class StreamedRow:
    """A streamed row, checked but not yet tokenized nor its picture decoded (see `StreamingSupervisedDataset`)."""

    row: dict
    index: int
    sample: Conversation


class StreamingSupervisedDataset(IterableDataset):
    """A streamed 🤗 dataset, formatted and masked as the map-style one, each row checked as it is read.

    Under several processes each one reads the stream and keeps its share of every step's rows (accelerate's
    `IterableDatasetShard`; `dispatch_batches` is off, since the main process cannot concatenate and slice batches
    of differently padded ids and of one picture per image sample). So that a process tokenizes and decodes only
    the rows it trains on, items are `StreamedRow`s, encoded after the sharding by `StreamingCollator`.
    """

    def __init__(self, samples: datasets.IterableDataset, row_format: RowFormat, encoder: SampleEncoder,
                 image_folder: str | Path | None = None):
        self.row_format, self.encoder = row_format, encoder
        self.image_folder = Path(image_folder) if image_folder is not None else None
        self.samples = samples.select_columns(row_format.columns).decode(False)

    def __iter__(self) -> Iterator[StreamedRow]:
        for index, row in enumerate(self.samples):
            yield StreamedRow(row, index, self.row_format.conversation(row, index))

    def encode(self, streamed: StreamedRow) -> dict[str, torch.Tensor]:
        image = self.row_format.image(streamed.row, streamed.index, streamed.sample, self.image_folder)
        return self.encoder.item(streamed.sample, image)


@dataclass
class StreamingCollator(SupervisedCollator):
    """Encodes a process's share of streamed rows, then pads and stacks them as `SupervisedCollator`."""

    encode: Callable[[StreamedRow], dict[str, torch.Tensor]]

    def __call__(self, items: list[StreamedRow]) -> dict[str, torch.Tensor]:
        return super().__call__([self.encode(item) for item in items])


def training_collator(dataset: Dataset | IterableDataset, pad_token_id: int) -> SupervisedCollator:
    """The collator for a dataset of `build_training_dataset`."""
    if isinstance(dataset, StreamingSupervisedDataset):
        return StreamingCollator(pad_token_id, dataset.encode)
    return SupervisedCollator(pad_token_id)


def build_training_dataset(
    data_args, processor: LlavaProcessor, image_seq_length: int, training_args, version: str
) -> Dataset | IterableDataset:
    """The dataset `--data_path` or `--dataset_name` names (`DataArguments`), ready for the Trainer."""
    if data_args.data_path is not None:
        return LazySupervisedDataset(data_args.data_path, processor, image_seq_length, training_args.model_max_length,
                                     version, data_args.image_folder, data_args.skip_overlong_samples)
    encoder = SampleEncoder(processor, image_seq_length, training_args.model_max_length, version)
    source = f"{data_args.dataset_name} (split {data_args.dataset_split!r})"
    samples = load_hub_dataset(data_args.dataset_name, data_args.dataset_split, data_args.streaming)
    if samples.features is None:
        raise ValueError(f"{source}: its columns are unknown before reading it; give its features or drop --streaming")
    row_format = RowFormat(samples.features, source, encoder.version, data_args.messages_column,
                           data_args.image_column)
    if not data_args.streaming:
        return HubSupervisedDataset(samples, row_format, encoder, data_args.image_folder,
                                    data_args.skip_overlong_samples)
    if training_args.max_steps <= 0:
        raise ValueError("--streaming reads an iterable of unknown length: give --max_steps")
    if training_args.group_by_modality_length or data_args.skip_overlong_samples:
        raise ValueError("--group_by_modality_length and --skip_overlong_samples need the whole dataset: drop "
                         "--streaming")
    if training_args.accelerator_config.dispatch_batches:
        raise ValueError("--streaming: every process reads the stream and keeps its share; drop dispatch_batches "
                         "from --accelerator_config")
    training_args.accelerator_config.dispatch_batches = False
    return StreamingSupervisedDataset(samples, row_format, encoder, data_args.image_folder)


__all__ = [
    "HubSupervisedDataset",
    "RowFormat",
    "StreamedRow",
    "StreamingCollator",
    "StreamingSupervisedDataset",
    "build_training_dataset",
    "load_hub_dataset",
    "training_collator",
]
