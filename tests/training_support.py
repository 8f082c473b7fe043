"""Helpers and fixtures shared by the training tests: tiny starting checkpoints, small datasets, run arguments."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPVisionModel, LlamaForCausalLM, LlamaTokenizer

from modeling_mmfuser_llava.demo import write_tiny_hub_folder
from modeling_mmfuser_llava.processing import IMAGE_TOKEN
from modeling_mmfuser_llava.tiny import build_tiny_model, train_tiny_sentencepiece
from modeling_mmfuser_llava.training import data, hub_data, make_synthetic_dataset, parse_arguments, run_training
from modeling_mmfuser_llava.training.conversation import FORMATTERS, encode, parse_record


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny model trains fastest on one thread, and the test machine's cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """The seeded tiny model as a Hub folder: the starting checkpoint of most runs. Do not write into it."""
    return write_tiny_hub_folder(tmp_path_factory.mktemp("start") / "tiny")


@pytest.fixture(scope="session")
def instructions(tmp_path_factory) -> Path:
    """A synthetic stage-2 dataset (multi-turn and text-only samples); returns data.json's path."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("data") / "instructions", num_samples=32, seed=0)


@pytest.fixture(scope="session")
def captions(tmp_path_factory) -> Path:
    """A synthetic stage-1 dataset (one image and caption per sample); returns data.json's path."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("data") / "captions", num_samples=16, seed=1, kind="captions")


@pytest.fixture(scope="session")
def base_parts(tmp_path_factory) -> tuple[Path, Path]:
    """A base Llama LLM folder (plain sentencepiece tokenizer: no <image>, no pad) and a CLIP vision folder."""
    model, _ = build_tiny_model(seed=3)
    root = tmp_path_factory.mktemp("base")
    (root / "sp").mkdir()
    (root / "sp" / "tokenizer.model").write_bytes(train_tiny_sentencepiece(seed=3))
    tokenizer = LlamaTokenizer.from_pretrained(root / "sp", legacy=True)
    text_config = model.config.text_config
    text_config.vocab_size = len(tokenizer)
    text_config.pad_token_id = None
    llm = LlamaForCausalLM(text_config)
    llm.save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    CLIPVisionModel(model.config.vision_config).save_pretrained(root / "clip")
    return root / "llm", root / "clip"


def training_argv(output_dir: Path, model: Path, data: Path, *extra: str, steps: int = 4) -> list[str]:
    """A short CPU run without checkpoints or progress bars; `extra` flags override."""
    return [
        "--model_name_or_path", str(model),
        "--data_path", str(data),
        "--image_folder", str(data.parent / "images"),
        "--output_dir", str(output_dir),
        "--max_steps", str(steps),
        "--per_device_train_batch_size", "2",
        "--learning_rate", "3e-3",
        "--logging_steps", "1",
        "--save_strategy", "no",
        "--use_cpu", "True",
        "--disable_tqdm", "True",
        "--seed", "0",
        *extra,
    ]


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


DISTRIBUTED_WORKER = Path(__file__).with_name("distributed_worker.py")


JSON_LOAD_VARIABLE = "MMFUSER_TEST_JSON_LOAD"  # set: the distributed worker reads --data_path with JsonLoadDataset
BUILDS_VARIABLE = "MMFUSER_TEST_CACHE_BUILDS"  # a folder: each worker that writes an Arrow cache marks it there


def train_two_processes(*argv: str, json_load: bool = False, builds: Path | None = None,
                        datasets_cache: Path | None = None) -> subprocess.CompletedProcess:
    """`run_training` on two CPU processes (torchrun, gloo); each writes its weights beside the output folder.
    `json_load`: read `--data_path` with the reference loader, as before the Arrow cache; `builds`: a folder where
    each process that builds an Arrow cache writes `built-by-rank<N>`; `datasets_cache`: their HF_DATASETS_CACHE."""
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    if json_load:
        environment[JSON_LOAD_VARIABLE] = "1"
    if builds is not None:
        environment[BUILDS_VARIABLE] = str(builds)
    if datasets_cache is not None:
        environment["HF_DATASETS_CACHE"] = str(datasets_cache)
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(DISTRIBUTED_WORKER), *argv, "--ddp_backend", "gloo"],
        env=environment, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )


def mark_cache_builds(patch, marker: Path) -> None:
    """Touch `marker` whenever this process writes an Arrow cache, and make the build slow, so that a process that
    does not wait for another's build starts its own (`patch`: a pytest MonkeyPatch)."""
    write_table = data.write_table

    def marked(rows, path):
        marker.touch()
        time.sleep(5)
        return write_table(rows, path)

    patch.setattr(data, "write_table", marked)


def use_json_load(patch) -> None:
    """Make `run_training` read `--data_path` with `JsonLoadDataset` (`patch`: a pytest MonkeyPatch)."""
    patch.setattr(hub_data, "LazySupervisedDataset", JsonLoadDataset)


def train(*argv: str):
    """Run training as the CLI does; returns the Trainer."""
    return run_training(*parse_arguments(list(argv)))


def losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a saved folder's safetensors files."""
    return {key: value for path in sorted(folder.glob("*.safetensors")) for key, value in load_file(path).items()}


def write_dataset(folder: Path, records: list[dict], images: dict[str, Image.Image] | None = None) -> Path:
    """`records` as data.json, `images` saved under folder/images; returns data.json's path."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for name, image in (images or {}).items():
        image.save(folder / "images" / name)
    path = folder / "data.json"
    path.write_text(json.dumps(records))
    return path
