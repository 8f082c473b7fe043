"""The training CLI, the paper's configs, the synthetic data generator, and the install hint."""

import json
import re
from pathlib import Path

import pytest

from modeling_mmfuser_llava import training
from modeling_mmfuser_llava.cli import main as cli_main
from modeling_mmfuser_llava.training.arguments import load_config_file, parse_arguments
from modeling_mmfuser_llava.training.data import LazySupervisedDataset
from modeling_mmfuser_llava.training.synthetic import make_synthetic_dataset
from training_support import captions, one_thread, tiny_checkpoint, training_argv  # noqa: F401  (fixtures)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
GPUS = 8  # the paper's runs


@pytest.mark.parametrize(
    ("name", "llm", "global_batch", "learning_rate", "fuser_learning_rate", "zero"),
    [
        ("stage1_7b", "lmsys/vicuna-7b-v1.5", 256, 1e-3, None, 2),
        ("stage1_13b", "lmsys/vicuna-13b-v1.5", 256, 1e-3, 1e-4, 2),
        ("stage2_7b", "lmsys/vicuna-7b-v1.5", 128, 2e-5, None, 3),
        ("stage2_13b", "lmsys/vicuna-13b-v1.5", 128, 2e-5, None, 3),
    ],
)
def test_configs_reproduce_the_paper(name, llm, global_batch, learning_rate, fuser_learning_rate, zero):
    config = CONFIGS / f"{name}.yaml"
    raw = load_config_file(config)
    assert raw["bf16"] and raw["tf32"]  # GPU-only settings: overridden below to parse on this CPU machine
    deepspeed = json.loads((CONFIGS.parent / raw["deepspeed"]).read_text())
    assert deepspeed["zero_optimization"]["stage"] == zero
    model_args, data_args, training_args = parse_arguments(
        [str(config), "--deepspeed", "", "--use_cpu", "True", "--tf32", "False"]
    )
    stage1 = name.startswith("stage1")
    assert model_args.model_name_or_path == llm and model_args.vision_tower == "openai/clip-vit-large-patch14-336"
    assert model_args.mm_vision_select_layer == "list-22/-17/-12/-7/-2"
    assert model_args.version == ("plain" if stage1 else "v1") and model_args.tune_mm_mlp_adapter == stage1
    assert (model_args.pretrain_mm_mlp_adapter is None) == stage1
    assert data_args.image_aspect_ratio == ("square" if stage1 else "pad")
    assert training_args.group_by_modality_length == (not stage1)
    assert training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * GPUS == global_batch
    assert training_args.learning_rate == learning_rate and training_args.ms_cross_attn_lr == fuser_learning_rate
    assert training_args.num_train_epochs == 1 and training_args.lr_scheduler_type == "cosine"
    assert training_args.warmup_steps == 0.03 and training_args.weight_decay == 0
    assert training_args.model_max_length == 2048 and training_args.activation_checkpointing


def test_stage2_configs_read_stage1_output():
    for size in ("7b", "13b"):
        stage1, stage2 = (load_config_file(CONFIGS / f"stage{n}_{size}.yaml") for n in (1, 2))
        assert stage2["pretrain_mm_mlp_adapter"] == f"{stage1['output_dir']}/mm_projector.safetensors"


def test_sharding_configs():
    zero3 = json.loads((CONFIGS / "deepspeed" / "zero3.json").read_text())
    assert zero3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]  # whole weights on save
    fsdp = load_config_file(CONFIGS / "accelerate" / "fsdp.yaml")
    assert fsdp["distributed_type"] == "FSDP" and fsdp["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    assert "MMFuserBlock" in fsdp["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"].split(",")
    assert not fsdp["fsdp_config"]["fsdp_activation_checkpointing"]  # the stage configs use the Trainer's


def test_train_help_shows_original_and_trainer_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["train", "--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    for flag in ("--tune_mm_mlp_adapter", "--pretrain_mm_mlp_adapter", "--ms_cross_attn_lr", "--version",
                 "--group_by_modality_length", "--image_aspect_ratio", "--lora_enable", "--learning_rate"):
        assert flag in usage


def test_cli_trains_stage1(tmp_path, tiny_checkpoint, captions):
    argv = training_argv(tmp_path / "out", tiny_checkpoint, captions, "--version", "plain",
                         "--tune_mm_mlp_adapter", "True", steps=2)
    assert cli_main(["train", *argv]) == 0
    assert (tmp_path / "out" / "mm_projector.safetensors").is_file()


def test_synthetic_data_is_seeded_and_fits_both_stages(tmp_path, tiny_pristine):
    first = make_synthetic_dataset(tmp_path / "a", num_samples=24, seed=5)
    again = make_synthetic_dataset(tmp_path / "b", num_samples=24, seed=5)
    other = make_synthetic_dataset(tmp_path / "c", num_samples=24, seed=6)
    assert first.read_text() == again.read_text() != other.read_text()
    for image in (first.parent / "images").iterdir():
        assert image.read_bytes() == (again.parent / "images" / image.name).read_bytes()
    samples = json.loads(first.read_text())
    assert any("image" not in sample for sample in samples)  # text-only samples
    assert any(len(sample["conversations"]) == 4 for sample in samples)  # two rounds
    processor = tiny_pristine[1]
    assert len(LazySupervisedDataset(first, processor, 64, 512, "v1", first.parent / "images")) == 24
    captions_file = make_synthetic_dataset(tmp_path / "d", num_samples=8, seed=0, kind="captions")
    assert len(LazySupervisedDataset(captions_file, processor, 64, 512, "plain", captions_file.parent / "images")) == 8
    with pytest.raises(FileExistsError):
        make_synthetic_dataset(tmp_path / "a", num_samples=2)
    assert cli_main(["make-synthetic-data", str(tmp_path / "a"), "--num-samples", "24", "--seed", "5",
                     "--overwrite"]) == 0
    assert first.read_text() == again.read_text()


def test_install_hint_names_the_packages_of_each_extra():
    """The `training` docstring's "`extra` extra (packages)" hints list exactly what pyproject.toml puts in them."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((CONFIGS.parent / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    hints = re.findall(r"`(\w+)` extra \(([^)]*)\)", " ".join(training.__doc__.split()))
    assert [extra for extra, _ in hints] == ["train", "quantization"]
    for extra, packages in hints:
        assert packages.split(", ") == [re.split(r"[<>=~!\[ ]", requirement)[0] for requirement in extras[extra]]
