"""The LLaVA JSON data: a lazy dataset, the collator for mixed image/text-only batches, modality-grouped sampling."""

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler
from transformers import LlavaProcessor

from ..processing import IMAGE_TOKEN
from .conversation import FORMATTERS, IGNORE_INDEX, Conversation, InvalidSampleError, encode, parse_record

logger = logging.getLogger(__name__)


class OverlongSampleError(InvalidSampleError):
    """A sample that does not fit `model_max_length` without breaking it."""


class LazySupervisedDataset(Dataset):
    """LLaVA-format samples, checked when the file is read; tokenized and their images loaded only when fetched.

    A sample that `model_max_length` would cut inside its image tokens, or strip of every supervised token, raises
    `OverlongSampleError` when fetched; with `skip_overlong_samples` all samples are tokenized (text only) up front and
    such samples are left out, their ids kept in `skipped_sample_ids`.
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
    ):
        tokenizer = processor.tokenizer
        if not tokenizer.is_fast:
            raise ValueError("training needs a tokenizer with character offsets (a tokenizers-backed tokenizer)")
        with open(data_path) as file:
            records = json.load(file)
        if not isinstance(records, list):
            raise ValueError(f"{data_path} must hold a JSON list of samples")
        self.samples = [parse_record(record, index, version) for index, record in enumerate(records)]
        if any(sample.image is not None for sample in self.samples) and image_folder is None:
            raise ValueError(f"{data_path} has samples with images: pass --image_folder")
        self.processor = processor
        self.format = FORMATTERS[version]
        self.image_folder = Path(image_folder) if image_folder is not None else None
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.image_seq_length = image_seq_length
        self.model_max_length = model_max_length
        self.skipped_sample_ids: list[str] = []
        if skip_overlong_samples:
            kept = []
            for sample in self.samples:
                try:
                    self.encode(sample)
                    kept.append(sample)
                except OverlongSampleError:
                    self.skipped_sample_ids.append(sample.sample_id)
            self.samples = kept
            logger.warning(
                "skipped %d of %d samples that do not fit model_max_length=%d%s",
                len(self.skipped_sample_ids),
                len(records),
                model_max_length,
                f" (first ids: {self.skipped_sample_ids[:5]})" if self.skipped_sample_ids else "",
            )

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def modality_lengths(self) -> list[int]:
        """Word counts as the original estimates them: positive for samples with an image, negative without."""
        lengths = []
        for sample in self.samples:
            words = sum(len(text.split()) for _, text in sample.turns)
            lengths.append(max(words, 1) if sample.image is not None else -max(words, 1))
        return lengths

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

    def load_image(self, sample: Conversation) -> Image.Image:
        path = self.image_folder / sample.image
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except FileNotFoundError:
            raise InvalidSampleError(f"sample {sample.sample_id!r}: image {path} does not exist") from None
        except (UnidentifiedImageError, OSError) as error:
            raise InvalidSampleError(f"sample {sample.sample_id!r}: cannot read image {path}: {error}") from error

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.samples[index]
        input_ids, labels = self.encode(sample)
        item = {"input_ids": torch.tensor(input_ids), "labels": torch.tensor(labels)}
        if sample.image is not None:
            pixels = self.processor.image_processor(self.load_image(sample), return_tensors="pt")["pixel_values"]
            item["pixel_values"] = pixels
        return item


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
    "ModalityLengthGroupedSampler",
    "OverlongSampleError",
    "SupervisedCollator",
]
