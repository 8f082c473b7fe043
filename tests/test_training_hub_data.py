"""Training data from 🤗 datasets: TRL's messages/images and LLaVA's layout with embedded pictures, from a save_to_disk
folder or parquet files, map-style or streamed, give the JSON path's items and losses; bad rows are named."""

import json

import datasets
import pytest
import torch

from modeling_mmfuser_llava.training.conversation import InvalidSampleError
from modeling_mmfuser_llava.training.data import LazySupervisedDataset, SampleEncoder
from modeling_mmfuser_llava.training.hub_data import (
    HubSupervisedDataset,
    RowFormat,
    StreamingSupervisedDataset,
    load_hub_dataset,
)
from training_support import (  # noqa: F401  (fixtures)
    instructions,
    losses,
    tiny_checkpoint,
    train,
    train_two_processes,
    training_argv,
)

IMAGE_SEQ_LENGTH = 64
ROLES = {"human": "user", "gpt": "assistant"}


def embedded(path):
    return {"bytes": path.read_bytes(), "path": None}


def llava_rows(data_path):
    """The JSON's records with their pictures embedded (an Image feature), as LLaVA datasets on the Hub hold them."""
    records = json.loads(data_path.read_text())
    images = [embedded(data_path.parent / "images" / record["image"]) if "image" in record else None
              for record in records]
    features = datasets.Features({
        "id": datasets.Value("string"),
        "conversations": [{"from": datasets.Value("string"), "value": datasets.Value("string")}],
        "image": datasets.Image(),
    })
    return datasets.Dataset.from_dict({"id": [r["id"] for r in records],
                                       "conversations": [r["conversations"] for r in records], "image": images},
                                      features=features)


def trl_rows(data_path):
    """The JSON's records in TRL's VLM format: chat messages with image parts, and a list of pictures per row."""
    messages, images = [], []
    for record in json.loads(data_path.read_text()):
        turns = []
        for turn in record["conversations"]:
            text = turn["value"].replace("<image>", "").strip()
            content = [{"type": "text", "text": text, "image": None}]
            if "<image>" in turn["value"]:
                content = [{"type": "image", "text": None, "image": None}, *content]
            turns.append({"role": ROLES[turn["from"]], "content": content})
        messages.append(turns)
        images.append([embedded(data_path.parent / "images" / record["image"])] if "image" in record else [])
    return datasets.Dataset.from_dict({"messages": messages, "images": images}).cast_column(
        "images", datasets.List(datasets.Image())
    )


def write(rows, folder, how):
    if how == "save_to_disk":
        rows.save_to_disk(folder)
    else:
        folder.mkdir()
        rows.to_parquet(folder / "train.parquet")
    return folder


@pytest.fixture
def processor(tiny_pristine):
    return tiny_pristine[1]


@pytest.fixture
def json_items(instructions, processor):
    data = LazySupervisedDataset(instructions, processor, IMAGE_SEQ_LENGTH, 512, image_folder=instructions.parent /
                                 "images")
    return [data[index] for index in range(len(data))], data.modality_lengths


def hub_dataset(folder, processor, streaming=False):
    samples = load_hub_dataset(str(folder), "train", streaming)
    row_format = RowFormat(samples.features, str(folder), "v1")
    encoder = SampleEncoder(processor, IMAGE_SEQ_LENGTH, 512)
    if streaming:
        return StreamingSupervisedDataset(samples, row_format, encoder)
    return HubSupervisedDataset(samples, row_format, encoder)


def assert_same_items(ours, reference):
    assert len(ours) == len(reference)
    for index, (mine, theirs) in enumerate(zip(ours, reference)):
        assert mine.keys() == theirs.keys(), index
        for key in theirs:
            assert torch.equal(mine[key], theirs[key]), (index, key)


@pytest.mark.parametrize(("layout", "how"), [(llava_rows, "save_to_disk"), (trl_rows, "parquet"),
                                             (trl_rows, "save_to_disk"), (llava_rows, "parquet")])
def test_each_layout_gives_the_json_paths_items(tmp_path, instructions, processor, json_items, layout, how):
    folder = write(layout(instructions), tmp_path / "dataset", how)
    items, lengths = json_items
    data = hub_dataset(folder, processor)
    assert data.row_format.layout == ("messages" if layout is trl_rows else "conversations")
    assert_same_items([data[index] for index in range(len(data))], items)
    assert data.modality_lengths == lengths
    streamed = hub_dataset(folder, processor, streaming=True)
    assert_same_items([streamed.encode(row) for row in streamed], items)


@pytest.mark.parametrize("layout", [llava_rows, trl_rows])
def test_training_on_a_hub_dataset_gives_the_json_paths_losses(tmp_path, tiny_checkpoint, instructions, layout):
    folder = write(layout(instructions), tmp_path / "dataset", "save_to_disk")
    grouped = ("--group_by_modality_length", "True")
    json_losses = losses(train(*training_argv(tmp_path / "json", tiny_checkpoint, instructions, *grouped)))
    argv = data_source(training_argv(tmp_path / "hub", tiny_checkpoint, instructions, *grouped), folder)
    assert losses(train(*argv)) == json_losses and len(json_losses) == 4


def data_source(argv: list[str], folder) -> list[str]:
    """The run's arguments with `--dataset_name folder` in place of `--data_path`."""
    at = argv.index("--data_path")
    return [*argv[:at], "--dataset_name", str(folder), *argv[at + 2 :]]


def test_two_processes_train_each_source_with_json_loads_losses(tmp_path, tiny_checkpoint, instructions):
    """Under DDP: the Arrow-cached JSON (built by the main process alone, into a fresh cache, then memory-mapped by
    the other) and a hub dataset give the loss sequence of json.load (grouped), and a stream sharded across the
    processes gives that of the JSON read in order."""
    hub_folder = write(llava_rows(instructions), tmp_path / "hub", "save_to_disk")
    stream_folder = write(trl_rows(instructions), tmp_path / "stream", "parquet")
    grouped, in_order = ("--group_by_modality_length", "True"), ("--train_sampling_strategy", "sequential")
    runs = {
        "json.load": ([*grouped], None, True),
        "arrow": ([*grouped], None, False),
        "hub": ([*grouped], hub_folder, False),
        "in order": ([*in_order], None, False),
        "streamed": (["--streaming", "True"], stream_folder, False),
    }
    logged = {}
    for name, (extra, folder, json_load) in runs.items():
        argv = training_argv(tmp_path / name, tiny_checkpoint, instructions, *extra)
        fresh_cache = {"builds": tmp_path, "datasets_cache": tmp_path / "cache"} if name == "arrow" else {}
        result = train_two_processes(*(data_source(argv, folder) if folder else argv), json_load=json_load,
                                     **fresh_cache)
        assert result.returncode == 0, (name, result.stderr[-4000:])
        history = json.loads((tmp_path / name / "trainer_state.json").read_text())["log_history"]
        logged[name] = [entry["loss"] for entry in history if "loss" in entry]
    assert sorted(marker.name for marker in tmp_path.glob("built-by-rank*")) == ["built-by-rank0"]
    assert logged["arrow"] == logged["json.load"] == logged["hub"] and len(logged["json.load"]) == 4
    assert logged["streamed"] == logged["in order"] and len(logged["in order"]) == 4
    assert logged["in order"] != logged["json.load"]


def test_streaming_trains_with_the_json_paths_losses_in_file_order(tmp_path, tiny_checkpoint, instructions):
    folder = write(trl_rows(instructions), tmp_path / "dataset", "parquet")
    in_order = ("--train_sampling_strategy", "sequential")
    json_losses = losses(train(*training_argv(tmp_path / "json", tiny_checkpoint, instructions, *in_order)))
    argv = data_source(training_argv(tmp_path / "hub", tiny_checkpoint, instructions, "--streaming", "True"), folder)
    assert losses(train(*argv)) == json_losses and len(json_losses) == 4
    argv[argv.index("--max_steps") + 1] = "-1"
    with pytest.raises(ValueError, match="--streaming .* give --max_steps"):
        train(*argv)


def test_an_embedded_image_that_does_not_decode_names_its_row(tmp_path, instructions, processor):
    rows = llava_rows(instructions).cast_column("image", datasets.Image(decode=False)).to_list()
    broken = next(index for index, row in enumerate(rows) if row["image"] is not None and index > 0)
    rows[broken]["image"] = {"bytes": b"not a picture", "path": None}
    datasets.Dataset.from_list(rows, features=llava_rows(instructions).features).save_to_disk(tmp_path / "dataset")
    data = hub_dataset(tmp_path / "dataset", processor)
    data[broken - 1]
    with pytest.raises(InvalidSampleError, match=rf"sample '{rows[broken]['id']}' \(row {broken}\): its embedded "
                                                 "image in 'image' does not decode"):
        data[broken]


def test_an_invalid_row_names_the_dataset_row_and_field(tmp_path, instructions, processor):
    rows = trl_rows(instructions).to_list()
    rows[3]["messages"][0]["role"] = "system"
    rows[5]["messages"] = rows[5]["messages"][:1]  # no answer
    for bad, message in ((3, "role 'system'"), (5, "end with a gpt answer")):
        good = [row for index, row in enumerate(rows) if index not in (3, 5) or index == bad]
        folder = tmp_path / f"dataset-{bad}"
        datasets.Dataset.from_list(good, features=trl_rows(instructions).features).save_to_disk(folder)
        with pytest.raises(InvalidSampleError, match=message) as error:
            hub_dataset(folder, processor)
        assert f"{folder}" in str(error.value) and f"{bad}" in str(error.value) and "'messages'" in str(error.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [([], "--data_path .* or --dataset_name"), (["--data_path", "d.json", "--dataset_name", "x"], "one of them"),
     (["--data_path", "d.json", "--streaming", "True"], "--streaming reads --dataset_name")],
)
def test_the_data_arguments_name_one_source(tmp_path, data, message):
    from modeling_mmfuser_llava.training import parse_arguments

    with pytest.raises(ValueError, match=message):
        parse_arguments(["--model_name_or_path", "m", "--output_dir", str(tmp_path), "--use_cpu", "True", *data])


def test_a_dataset_with_embedded_pictures_is_read_in_place_not_copied(tmp_path, instructions, processor):
    folder = write(llava_rows(instructions), tmp_path / "dataset", "save_to_disk")
    files = sorted(folder.rglob("*"))
    data = hub_dataset(folder, processor)
    data[1]
    assert sorted(folder.rglob("*")) == files
    assert data.samples.cache_files == [{"filename": str(path)} for path in files if path.suffix == ".arrow"]
