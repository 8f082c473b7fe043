"""The Arrow-backed LLaVA data: the same samples, tokens, labels, lengths and losses as reading the JSON directly, a
cache keyed on the file's content that a killed build never leaves half-written, JSONL, errors naming file/entry/id."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks.training_data import SPLIT_TEXT_ONLY, main, write_mix_file
from modeling_mmfuser_llava.training import data as data_module
from modeling_mmfuser_llava.training.conversation import InvalidSampleError, parse_record
from modeling_mmfuser_llava.training.data import LazySupervisedDataset, cached_samples
from training_support import (  # noqa: F401  (fixtures)
    JsonLoadDataset,
    instructions,
    losses,
    tiny_checkpoint,
    train,
    training_argv,
    use_json_load,
)

IMAGE_SEQ_LENGTH = 64


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


@pytest.fixture(scope="module")
def instructions_jsonl(instructions):
    """The same samples as JSONL (one a line, a blank line at the end), beside data.json and its images."""
    jsonl = instructions.with_suffix(".jsonl")
    jsonl.write_text("".join(json.dumps(record) + "\n" for record in json.loads(instructions.read_text())) + "\n")
    return jsonl


def test_jsonl_gives_the_same_samples(instructions, instructions_jsonl, processor, tmp_path):
    ours = arrow_dataset(instructions_jsonl, processor, tmp_path / "cache")
    assert_same_items(ours, arrow_dataset(instructions, processor, tmp_path / "cache"))


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


KILLED_BUILD = """
import sys, time
from pathlib import Path
from modeling_mmfuser_llava.training import data

data.BUILD_BATCH = 2
checked_rows = data.checked_rows


def rows_then_hang(data_path, version):
    for index, row in enumerate(checked_rows(data_path, version)):
        if index == 5:  # two batches are written: the build is half-way
            Path(sys.argv[3]).touch()
            time.sleep(600)
        yield row


data.checked_rows = rows_then_hang
data.cached_samples(sys.argv[1], "v1", sys.argv[2])
"""


def test_a_build_killed_by_sigkill_leaves_no_cache_that_a_later_run_trusts(tmp_path):
    records = [{"id": f"s{index}", "conversations": [{"from": "human", "value": "q"},
                                                      {"from": "gpt", "value": f"answer {index}"}]}
               for index in range(8)]
    path, cache, halfway = tmp_path / "data.json", tmp_path / "cache", tmp_path / "halfway"
    path.write_text(json.dumps(records))
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    build = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, str(path), str(cache), str(halfway)],
                             env=environment, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not halfway.exists() and build.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert halfway.exists(), "the build did not get half-way"
    finally:
        os.kill(build.pid, signal.SIGKILL)
        build.wait(timeout=60)
    assert any(cache.glob("*/" + data_module.TABLE_FILE))  # the half-written table is on disk, but only staged
    samples = cached_samples(path, "v1", cache)
    assert [row["conversations"][1]["value"] for row in samples] == [f"answer {index}" for index in range(8)]


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


@pytest.mark.parametrize("layout", ["json", "jsonl"])
def test_training_gives_the_same_losses_as_json_load(tmp_path, monkeypatch, tiny_checkpoint, instructions,
                                                     instructions_jsonl, layout):
    data_path = instructions_jsonl if layout == "jsonl" else instructions
    argv = training_argv(tmp_path / "arrow", tiny_checkpoint, data_path, "--group_by_modality_length", "True")
    arrow_losses = losses(train(*argv))
    use_json_load(monkeypatch)
    argv = training_argv(tmp_path / "json", tiny_checkpoint, instructions, "--group_by_modality_length", "True")
    assert arrow_losses == losses(train(*argv)) and len(arrow_losses) == 4


def test_the_benchmark_file_has_the_mixs_layout_and_every_loader_gets_a_row(tmp_path, capsys):
    write_mix_file(tmp_path / "mix.json", 160)
    samples = [parse_record(record, index, "v1")
               for index, record in enumerate(json.loads((tmp_path / "mix.json").read_text()))]
    assert sum(sample.image is None for sample in samples) == 160 // SPLIT_TEXT_ONLY
    assert {len(sample.turns) // 2 for sample in samples} == set(range(1, 9))
    assert main(["--samples", "32", "--processes", "2", "--folder", str(tmp_path)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| today", "| Arrow"))]
    assert len(rows) == 4 and all(line.count("|") == 10 for line in rows)
