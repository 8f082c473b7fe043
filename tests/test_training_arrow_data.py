"""The Arrow-backed LLaVA data: the same samples, tokens, labels, lengths and losses as reading the JSON directly, a
cache keyed on the file's content that a killed build never leaves half-written, JSONL, errors naming file/entry/id."""

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from modeling_mmfuser_llava.processing import IMAGE_TOKEN
from modeling_mmfuser_llava.training import data as data_module
from modeling_mmfuser_llava.training import hub_data
from modeling_mmfuser_llava.training.conversation import FORMATTERS, InvalidSampleError, encode, parse_record
from modeling_mmfuser_llava.training.data import LazySupervisedDataset, cached_samples
from training_support import (  # noqa: F401  (fixtures)
    instructions,
    losses,
    tiny_checkpoint,
    train,
    training_argv,
)

IMAGE_SEQ_LENGTH = 64


class JsonLoadDataset(torch.utils.data.Dataset):
    """The loader the Arrow cache replaced, as an independent reference: `json.load` of the whole file, every entry
    parsed into Python objects, word counts summed per sample."""

    def __init__(self, data_path, processor, image_seq_length, model_max_length, version="v1", image_folder=None,
                 skip_overlong_samples=False):
        assert not skip_overlong_samples, "the reference keeps every sample"
        with open(data_path) as file:
            self.samples = [parse_record(record, index, version) for index, record in enumerate(json.load(file))]
        self.processor, self.format, self.image_folder = processor, FORMATTERS[version], Path(image_folder)
        self.image_token_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.image_seq_length, self.model_max_length = image_seq_length, model_max_length

    def __len__(self):
        return len(self.samples)

    @property
    def modality_lengths(self):
        return [(1 if sample.image else -1) * max(sum(len(text.split()) for _, text in sample.turns), 1)
                for sample in self.samples]

    def __getitem__(self, index):
        sample = self.samples[index]
        input_ids, labels = encode(self.format(sample), self.processor.tokenizer, self.image_token_id,
                                   self.image_seq_length)
        item = {"input_ids": torch.tensor(input_ids[: self.model_max_length]),
                "labels": torch.tensor(labels[: self.model_max_length])}
        if sample.image is not None:
            with Image.open(self.image_folder / sample.image) as image:
                item["pixel_values"] = self.processor.image_processor(image.convert("RGB"),
                                                                      return_tensors="pt")["pixel_values"]
        return item


@pytest.fixture
def processor(tiny_pristine):
    return tiny_pristine[1]


def arrow_dataset(data_path, processor, cache_dir, **kwargs):
    return LazySupervisedDataset(data_path, processor, IMAGE_SEQ_LENGTH, 512, image_folder=data_path.parent / "images",
                                 cache_dir=cache_dir, **kwargs)


def assert_same_items(ours, reference):
    assert len(ours) == len(reference)
    for index in range(len(reference)):
        mine, theirs = ours[index], reference[index]
        assert mine.keys() == theirs.keys(), index
        for key in theirs:
            assert torch.equal(mine[key], theirs[key]), (index, key)


def test_every_sample_matches_json_load_and_the_lengths_too(instructions, processor, tmp_path):
    images = instructions.parent / "images"
    reference = JsonLoadDataset(instructions, processor, IMAGE_SEQ_LENGTH, 512, image_folder=images)
    assert any("pixel_values" not in reference[index] for index in range(len(reference)))  # both modalities
    ours = arrow_dataset(instructions, processor, tmp_path)
    assert_same_items(ours, reference)
    assert ours.modality_lengths == reference.modality_lengths
    # A second dataset reads the cache (no build) and memory-maps the same table.
    again = arrow_dataset(instructions, processor, tmp_path)
    assert [path.name for path in tmp_path.iterdir()] == [next(tmp_path.iterdir()).name]
    assert again.samples.cache_files == ours.samples.cache_files
    assert_same_items(again, reference)


def test_jsonl_gives_the_same_samples(instructions, processor, tmp_path):
    records = json.loads(instructions.read_text())
    jsonl = instructions.parent / "data.jsonl"
    jsonl.write_text("".join(json.dumps(record) + "\n" for record in records) + "\n")
    ours = arrow_dataset(jsonl, processor, tmp_path / "cache")
    assert_same_items(ours, arrow_dataset(instructions, processor, tmp_path / "cache"))
    jsonl.unlink()


def test_the_cache_is_keyed_on_the_files_content(tmp_path):
    record = {"id": "a", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "one"}]}
    path = tmp_path / "data.json"
    path.write_text(json.dumps([record]))
    first = cached_samples(path, "v1", tmp_path / "cache")
    stat = path.stat()
    path.write_text(json.dumps([{**record, "conversations": [record["conversations"][0],
                                                              {"from": "gpt", "value": "two"}]}]))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same modification time, other bytes
    second = cached_samples(path, "v1", tmp_path / "cache")
    assert first[0]["conversations"][1]["value"] == "one" and second[0]["conversations"][1]["value"] == "two"
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_a_killed_build_leaves_no_cache_that_a_later_run_reads(tmp_path, monkeypatch):
    record = {"id": "a", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    path = tmp_path / "data.json"
    path.write_text(json.dumps([record] * 3))
    write_table = data_module.write_table

    def killed(rows, table_path):
        write_table(rows, table_path)  # the table is complete on disk, the folder not yet renamed into place
        raise KeyboardInterrupt

    monkeypatch.setattr(data_module, "write_table", killed)
    with pytest.raises(KeyboardInterrupt):
        cached_samples(path, "v1", tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.undo()
    assert len(cached_samples(path, "v1", tmp_path / "cache")) == 3


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_an_invalid_record_names_the_file_entry_id_and_field(tmp_path, suffix):
    good = {"id": "good", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    bad = {"id": "bad-image", "image": ["a.png"], "conversations": good["conversations"]}
    path = tmp_path / f"data{suffix}"
    records = [good, good, bad]
    path.write_text(json.dumps(records) if suffix == ".json" else "".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(InvalidSampleError) as error:
        cached_samples(path, "v1", tmp_path / "cache")
    message = str(error.value)
    assert str(path) in message and "'bad-image' (entry 2)" in message and "'image'" in message
    assert list((tmp_path / "cache").iterdir()) == []


def test_training_gives_the_same_losses_as_json_load(tmp_path, monkeypatch, tiny_checkpoint, instructions):
    argv = training_argv(tmp_path / "arrow", tiny_checkpoint, instructions, "--group_by_modality_length", "True")
    arrow_losses = losses(train(*argv))
    monkeypatch.setattr(hub_data, "LazySupervisedDataset", JsonLoadDataset)
    argv = training_argv(tmp_path / "json", tiny_checkpoint, instructions, "--group_by_modality_length", "True")
    assert arrow_losses == losses(train(*argv)) and len(arrow_losses) == 4
