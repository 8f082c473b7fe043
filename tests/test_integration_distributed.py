"""`mmfuser-llava train` under DDP, DeepSpeed ZeRO-2, ZeRO-3 and FSDP2 on 2 CPU processes (gloo), as users launch it.

Each engine trains the tiny model with the same seed and global batch as the DDP run (the reference: plain torch, the
same losses as one process, tests/test_training_distributed.py); the test reads the `engine:` line, checks every step
ran and the loss falls, compares every trained weight with DDP's (1e-4), and reloads the saved folder in a clean
process through trust_remote_code (the folder's code files, normal key names).

Every run forces the case a real run meets sooner or later: on some step one process holds only text while the other
holds pictures, which stopped ZeRO-3 when the processes ran different modules. Mixed batches: one sample per
process and an odd number of pictures in each epoch, so some step pairs a picture with a text-only sample whatever
the order. Modality-grouped batches (with activation checkpointing): one whole epoch whose last, merged mega-batch
gives one process only text. Full stage 2 and LoRA (in the mixed runs with the fuser and projector frozen: no
vision-side weight trains, the vision side still runs). DeepSpeed JIT-builds one op on first use (~70 s): the build
is cached under `~/.cache/mmfuser-llava/torch_extensions`.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from isolated_venv import cache_root, user_environment
from modeling_mmfuser_llava.training import make_synthetic_dataset
from modeling_mmfuser_llava.training.data import ModalityLengthGroupedSampler
from training_support import (  # noqa: F401  (fixtures)
    base_parts,
    captions,
    instructions,
    tiny_checkpoint,
    train,
    training_argv,
    weights,
)

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).with_name("mmfuser-llava")
CONFIGS = REPO_ROOT / "configs"
ENGINE_FLAGS = {
    "ddp": [],
    "deepspeed-zero2": ["--deepspeed", str(CONFIGS / "deepspeed" / "zero2.json")],
    "deepspeed-zero3": ["--deepspeed", str(CONFIGS / "deepspeed" / "zero3.json")],
    "fsdp2": ["--fsdp", "full_shard auto_wrap", "--fsdp_config", str(CONFIGS / "fsdp" / "fsdp2.json")],
}
# ZeRO-3 with parameters and optimizer states in CPU memory (DeepSpeed's CPU Adam, a second op built on first use).
OFFLOAD_FLAGS = ["--deepspeed", str(CONFIGS / "deepspeed" / "zero3_offload.json")]
WEIGHT_TOLERANCE = 1e-4
STEPS = 6
GROUPED = ("--group_by_modality_length", "True", "--activation_checkpointing", "True")
LORA = ("--lora_enable", "True", "--lora_r", "4")  # with the default dropout (0.05): the engines draw the same masks
# Mixed batches: 5 of 8 samples with a picture, one per process (4 steps an epoch): some step pairs a picture with
# a text-only sample. Grouped: 10 text-only samples, then 14 with a picture, 2 per process: one epoch of 6 steps whose
# last mega-batch merges the 2 + 2 left over, sorted by index, so the first process holds only text.
MIXED_DATA = {"with_image": 5, "text_only": 3}
GROUPED_DATA = {"text_only": 10, "with_image": 14}
CASES = {
    "full, mixed": ("mixed", "--per_device_train_batch_size", "1"),
    "full, grouped": ("grouped", *GROUPED, "--max_steps", "-1", "--num_train_epochs", "1"),
    "LoRA frozen fuser, mixed": ("mixed", *LORA, "--freeze_mm_mlp_adapter", "True", "--per_device_train_batch_size", "1"),
    "LoRA, grouped": ("grouped", *LORA, *GROUPED, "--max_steps", "-1", "--num_train_epochs", "1"),
}


def launch(engine: str, argv: list[str], timeout: float = 600, check: bool = True,
           engine_flags: list[str] | None = None) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node 2 mmfuser-llava train ARGV <engine flags>` on CPU processes (gloo); `engine_flags`
    replace the engine's usual ones."""
    environment = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TORCH_EXTENSIONS_DIR": str(cache_root() / "torch_extensions"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(CLI), "train",
         *argv, "--ddp_backend", "gloo", *(ENGINE_FLAGS[engine] if engine_flags is None else engine_flags)],
        env=environment, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )
    if check:
        assert result.returncode == 0, f"{engine} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def assert_engine(output: str, engine: str) -> None:
    assert re.search(rf"^engine: {engine} \(2 processes, backend gloo\)$", output, re.MULTILINE), output[-3000:]


def logged_losses(output_dir: Path) -> list[float]:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def assert_close_to(reference: dict[str, torch.Tensor], trained: dict[str, torch.Tensor]) -> float:
    """Every tensor of `trained` within WEIGHT_TOLERANCE of the reference's; returns the largest difference."""
    assert set(trained) == set(reference)
    differences = {key: (trained[key].float() - reference[key].float()).abs().max().item() for key in reference}
    worst = max(differences, key=differences.get)
    assert differences[worst] <= WEIGHT_TOLERANCE, f"{worst} differs by {differences[worst]:.3g}"
    return differences[worst]


RELOAD = """
import sys, torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText
folder = sys.argv[1]
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
assert "modeling_mmfuser_llava" not in sys.modules
saved = load_file(f"{folder}/model.safetensors")
state = model.state_dict()
assert all(torch.equal(state[key], value) for key, value in saved.items()), "reloaded weights differ from the file"
size = model.config.vision_config.image_size
ids = torch.tensor([[1] + [model.config.image_token_id] * model.config.image_seq_length + [5, 6]])
logits = model(input_ids=ids, pixel_values=torch.rand(1, 3, size, size)).logits
assert torch.isfinite(logits).all()
print("reloaded", type(model).__name__)
"""


def assert_reloads(folder: Path, tmp_path: Path) -> None:
    """The folder holds the project's code files and `auto_map`, and reloads in a clean process through them."""
    files = {path.name for path in folder.iterdir()}
    assert {"modeling_mmfuser_llava.py", "configuration_mmfuser_llava.py", "fuser.py"} <= files, files
    assert not any(name.startswith("_fsdp") for name in files), files
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForImageTextToText"] == "modeling_mmfuser_llava.MMFuserLlavaForConditionalGeneration"
    script = tmp_path / "reload.py"
    script.write_text(RELOAD)
    result = subprocess.run(
        [sys.executable, str(script), str(folder)], cwd=tmp_path, env=user_environment(OMP_NUM_THREADS="1"),
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0 and "reloaded" in result.stdout, result.stderr[-4000:]


def runs_per_engine(root: Path, tiny_checkpoint: Path, data: Path, *flags: str) -> dict[str, tuple]:
    """Stage 2 from a full checkpoint with `flags`, each engine once: {engine: (output folder, rank 0's output, s)}."""
    runs = {}
    for engine in ENGINE_FLAGS:
        output_dir = root / engine
        argv = training_argv(output_dir, tiny_checkpoint, data, "--model_max_length", "256", *flags, steps=STEPS)
        started = time.monotonic()
        result = launch(engine, argv)
        runs[engine] = output_dir, joined_output(result), time.monotonic() - started
    return runs


def modality_counts(data: Path) -> dict[str, int]:
    records = json.loads(data.read_text())
    return {"with_image": sum("image" in record for record in records),
            "text_only": sum("image" not in record for record in records)}


@pytest.fixture(scope="module")
def case_data(tmp_path_factory) -> dict[str, Path]:
    """The mixed and the grouped data files, drawn from one synthetic set with as many text-only samples as not."""
    pool = make_synthetic_dataset(tmp_path_factory.mktemp("pool"), num_samples=48, seed=5, text_only_fraction=0.5)
    records = json.loads(pool.read_text())
    by_kind = {"with_image": [r for r in records if "image" in r], "text_only": [r for r in records if "image" not in r]}
    files = {}
    for name, counts in (("mixed", MIXED_DATA), ("grouped", GROUPED_DATA)):
        picked = [record for kind, count in counts.items() for record in by_kind[kind][:count]]
        files[name] = pool.with_name(f"{name}.json")
        files[name].write_text(json.dumps(picked))
        assert modality_counts(files[name]) == counts
    return files


@pytest.fixture(scope="module")
def case_runs(tmp_path_factory, tiny_checkpoint, case_data):
    """Each case's runs under every engine, launched when a test first asks for the case."""
    runs = {}

    def runs_of(case: str) -> dict[str, tuple]:
        if case not in runs:
            data, *flags = CASES[case]
            root = tmp_path_factory.mktemp(case.replace(",", "").replace(" ", "-"))
            runs[case] = runs_per_engine(root, tiny_checkpoint, case_data[data], *flags)
        return runs[case]

    return runs_of


def assert_trained_as_ddp(runs: dict[str, tuple], engine: str, label: str, steps: int = STEPS) -> Path:
    """The run's engine line, every step logged, a falling loss and every saved weight within WEIGHT_TOLERANCE of the
    DDP run's."""
    output_dir, output, seconds = runs[engine]
    assert_engine(output, engine)
    losses = logged_losses(output_dir)
    assert len(losses) == steps and losses[-1] < losses[0], losses
    largest = assert_close_to(weights(runs["ddp"][0]), weights(output_dir))
    print(f"{label}, {engine}: {seconds:.0f} s, {steps} steps, largest weight difference from DDP {largest:.2g}")
    return output_dir


def test_the_data_gives_one_process_only_text_while_the_other_has_pictures(case_data):
    """The premise of every run here, for the order the runs draw: mixed, an odd number of pictures one per process
    (so pairs of a picture and a text-only sample exist whatever the order); grouped, the Trainer's sampler order
    (2 processes x 2) ends with a step whose first process holds only text and whose second holds pictures."""
    assert MIXED_DATA["with_image"] % 2 == 1 and sum(MIXED_DATA.values()) % 2 == 0
    signs = [1 if "image" in record else -1 for record in json.loads(case_data["grouped"].read_text())]
    order = list(ModalityLengthGroupedSampler(signs, batch_size=2, world_size=2, seed=0))
    steps = [order[start : start + 4] for start in range(0, len(order), 4)]
    assert len(steps) == STEPS
    first_process, second_process = steps[-1][:2], steps[-1][2:]
    assert all(signs[index] < 0 for index in first_process) and all(signs[index] > 0 for index in second_process)


@pytest.mark.parametrize("engine", list(ENGINE_FLAGS))
@pytest.mark.parametrize("case", list(CASES))
def test_every_engine_trains_through_text_only_batches(case, engine, case_runs, tmp_path):
    """Every engine runs all its steps, also where one process holds only text, and ends at DDP's weights; a full
    run's saved folder reloads; a LoRA run's folder holds the adapters (and the fuser and projector)."""
    output_dir = assert_trained_as_ddp(case_runs(case), engine, case)
    if case.startswith("LoRA"):
        assert (output_dir / "adapter_config.json").is_file()
        assert any(".lora_A." in key for key in weights(output_dir))
    else:
        assert_reloads(output_dir, tmp_path)


def test_zero3_offload_config(case_runs, case_data, tiny_checkpoint, tmp_path):
    """configs/deepspeed/zero3_offload.json: the grouped stage-2 epoch with parameters and optimizer states in CPU
    memory ends at DDP's weights too."""
    data, *flags = CASES["full, grouped"]
    argv = training_argv(tmp_path / "offload", tiny_checkpoint, case_data[data], "--model_max_length", "256", *flags,
                         steps=STEPS)
    started = time.monotonic()
    output = joined_output(launch("deepspeed-zero3", argv, engine_flags=OFFLOAD_FLAGS))
    runs = {"ddp": case_runs("full, grouped")["ddp"],
            "deepspeed-zero3": (tmp_path / "offload", output, time.monotonic() - started)}
    assert_trained_as_ddp(runs, "deepspeed-zero3", "stage 2, grouped, checkpointing, ZeRO-3 offload")


def test_qlora_under_ddp_matches_one_process(tiny_checkpoint, instructions, tmp_path):
    """QLoRA (4-bit language model, bitsandbytes on CPU) under DDP, 2 processes x 2, ends at the adapters of one
    process with the same global batch (4). Without dropout: one process draws its masks for 4 samples at once."""
    qlora = (*LORA, "--lora_dropout", "0", "--bits", "4", "--model_max_length", "256")
    started = time.monotonic()
    output = joined_output(launch("ddp", training_argv(tmp_path / "ddp", tiny_checkpoint, instructions, *qlora,
                                                       steps=STEPS)))
    seconds = time.monotonic() - started
    train(*training_argv(tmp_path / "one", tiny_checkpoint, instructions, *qlora, "--per_device_train_batch_size", "4",
                         steps=STEPS))
    assert_engine(output, "ddp")
    losses = logged_losses(tmp_path / "ddp")
    assert len(losses) == STEPS and losses[-1] < losses[0], losses
    largest = assert_close_to(weights(tmp_path / "one"), weights(tmp_path / "ddp"))
    print(f"QLoRA, ddp: {seconds:.0f} s, largest weight difference from one process {largest:.2g}")


def test_stage1_then_stage2_from_parts_under_zero3(tmp_path_factory, base_parts, captions, instructions, tmp_path):
    """The paper's recipe from a base LLM, a CLIP tower and the stage-1 adapter, with activation checkpointing and
    mixed batches: ZeRO-3 trains every step (no skipped step) to DDP's weights."""
    llm, clip = base_parts
    root = tmp_path_factory.mktemp("from-parts")
    parts = ["--vision_tower", str(clip), "--model_max_length", "256"]
    stage1 = training_argv(root / "stage1", llm, captions, *parts, "--version", "plain",
                           "--tune_mm_mlp_adapter", "True", steps=4)
    assert_engine(joined_output(launch("deepspeed-zero2", stage1)), "deepspeed-zero2")
    adapter = root / "stage1" / "mm_projector.safetensors"
    assert adapter.is_file()
    stage2 = {}
    for engine in ("ddp", "deepspeed-zero3"):
        argv = training_argv(root / engine, llm, instructions, *parts, "--pretrain_mm_mlp_adapter", str(adapter),
                             "--activation_checkpointing", "True", steps=6)
        output = joined_output(launch(engine, argv))
        assert_engine(output, engine)
        assert "OVERFLOW" not in output and "Skipping step" not in output
        losses = logged_losses(root / engine)
        assert len(losses) == 6 and all(loss > 0 for loss in losses) and losses[-1] < losses[0], losses
        stage2[engine] = weights(root / engine)
    largest = assert_close_to(stage2["ddp"], stage2["deepspeed-zero3"])
    print(f"from parts, deepspeed-zero3: largest weight difference from DDP {largest:.2g}")
    assert_reloads(root / "deepspeed-zero3", tmp_path)


def test_a_requested_engine_that_does_not_run_is_an_error(tiny_checkpoint, instructions, tmp_path):
    """Without --use_cpu, accelerate joins no CPU processes (each would train alone, without DeepSpeed)."""
    argv = training_argv(tmp_path / "out", tiny_checkpoint, instructions, "--use_cpu", "False")
    result = launch("deepspeed-zero2", argv, check=False)
    assert result.returncode != 0
    assert "2 processes were launched but accelerate joined 1" in result.stderr + result.stdout
    assert not (tmp_path / "out").exists()


def joined_output(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr
