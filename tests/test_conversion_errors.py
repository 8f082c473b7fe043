"""Bad input to the converter: a clear error naming the problem, and nothing written at OUT."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from original_layout import original, original_config, write_original_checkpoint  # noqa: F401 (fixture)

from modeling_mmfuser_llava.conversion import ConversionError, convert_checkpoint
from modeling_mmfuser_llava.conversion import shard_writer
from modeling_mmfuser_llava.conversion.original_config import OriginalSettings, parse_select_layers
from modeling_mmfuser_llava.conversion.vision_preprocessing import check_vision_preprocessing
from modeling_mmfuser_llava.processing import build_image_processor


def assert_nothing_written(output_dir) -> None:
    assert not output_dir.exists()
    assert not [path for path in output_dir.parent.iterdir() if path.name.startswith(f".{output_dir.name}.partial")]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("mm_projector_type", "linear"),
        ("mm_use_im_start_end", True),
        ("mm_vision_select_feature", "cls_patch"),
        ("image_aspect_ratio", "square"),
        ("mm_patch_merge_type", "spatial_unpad"),
        ("mm_vision_select_layer", -2),
        ("mm_vision_select_layer", "list-2/-1"),
        ("model_type", "llava_mistral"),
        ("mm_hidden_size", 64),
        ("a_field_nobody_knows", 1),
    ],
)
def test_settings_the_port_cannot_honour_are_refused(original, tmp_path, field, value):
    source = write_original_checkpoint(tmp_path / "original", original, config_overrides={field: value})
    with pytest.raises(ConversionError, match=field):
        convert_checkpoint(source, tmp_path / "converted", progress=False)
    assert_nothing_written(tmp_path / "converted")


def test_an_absent_setting_means_the_originals_default(original):
    config = original_config(original)
    del config["image_aspect_ratio"]  # the original's default is 'square', which the port's processor does not do
    with pytest.raises(ConversionError, match=r"image_aspect_ratio is 'square' \(absent\)"):
        OriginalSettings.from_config(config)


def test_layer_list_in_string_or_list_form():
    assert parse_select_layers("list-22/-17/-12/-7/-2") == parse_select_layers([-22, -17, -12, -7, -2])
    settings = OriginalSettings.from_config(
        {"model_type": "llava_llama", "image_aspect_ratio": "pad", "mm_projector_type": "mlp2x_gelu",
         "mm_vision_select_layer": [-22, -17, -12, -7, -2]}
    )
    assert (settings.key_value_layers, settings.query_layer) == ((-22, -17, -12, -7), -2)


def test_unknown_tensors_are_an_error_listing_them(original, tmp_path):
    source = write_original_checkpoint(
        tmp_path / "original", original, extra_tensors={"model.image_newline": torch.zeros(64)}
    )
    with pytest.raises(ConversionError, match=r"does not know.*model\.image_newline"):
        convert_checkpoint(source, tmp_path / "converted", progress=False)
    assert_nothing_written(tmp_path / "converted")


def test_missing_and_misshaped_tensors_are_an_error_listing_them(original, tmp_path):
    weights = {name: value for name, value in original.weights.items() if name != "model.mm_projector.0.gamma2"}
    weights["model.mm_projector.3.bias"] = torch.zeros(7)
    source = write_original_checkpoint(tmp_path / "original", dataclasses.replace(original, weights=weights))
    with pytest.raises(ConversionError) as raised:
        convert_checkpoint(source, tmp_path / "converted", progress=False)
    assert "missing from the checkpoint: ['model.fuser.gamma2']" in str(raised.value)
    assert "model.mm_projector.3.bias [7] -> model.multi_modal_projector.linear_2.bias [64]" in str(raised.value)
    assert_nothing_written(tmp_path / "converted")


def test_tokenizer_that_does_not_match_the_embeddings_is_refused(original, tmp_path):
    weights = dict(original.weights)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        weights[name] = weights[name][:-1]
    source = write_original_checkpoint(
        tmp_path / "original", dataclasses.replace(original, weights=weights),
        config_overrides={"vocab_size": original.vocab_size - 1},
    )
    with pytest.raises(ConversionError, match=f"{original.vocab_size} tokens but embed_tokens has"):
        convert_checkpoint(source, tmp_path / "converted", progress=False)


@pytest.mark.parametrize("weight_format", ["bin", "safetensors"])
def test_corrupt_shard_leaves_nothing(original, tmp_path, weight_format):
    source = write_original_checkpoint(tmp_path / "original", original, weight_format=weight_format)
    shard = sorted(source.glob(f"*-00002-of-00002.{weight_format}"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(ConversionError, match=shard.name):
        convert_checkpoint(source, tmp_path / "converted", progress=False)
    assert_nothing_written(tmp_path / "converted")


def record_unpickling(marker: str) -> None:
    Path(marker).write_text("unpickled")


class RunsCodeWhenUnpickled:
    """Unpickling this calls `record_unpickling`: a stand-in for any code a pickled checkpoint could run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return record_unpickling, (str(self.marker),)


def test_bin_shard_pickling_code_is_refused_without_running_it(original, tmp_path):
    source = write_original_checkpoint(tmp_path / "original", original, weight_format="bin")
    shard = source / "pytorch_model-00002-of-00002.bin"
    marker = tmp_path / "unpickled"
    tensors = torch.load(shard, weights_only=True)
    torch.save({**tensors, next(iter(tensors)): RunsCodeWhenUnpickled(marker)}, shard)
    with pytest.raises(ConversionError, match=f"{shard.name} cannot be loaded as tensors only"):
        convert_checkpoint(source, tmp_path / "converted", progress=False)
    assert not marker.exists()  # weights_only: the pickled call never ran
    assert_nothing_written(tmp_path / "converted")


def test_missing_shard_file_leaves_nothing(original, tmp_path):
    source = write_original_checkpoint(tmp_path / "original", original, weight_format="safetensors")
    (source / "model-00001-of-00002.safetensors").unlink()
    with pytest.raises(ConversionError, match=r"missing .*model-00001-of-00002\.safetensors"):
        convert_checkpoint(source, tmp_path / "converted", progress=False)
    assert_nothing_written(tmp_path / "converted")


def test_interrupt_while_writing_leaves_nothing(original, tmp_path, monkeypatch):
    source = write_original_checkpoint(tmp_path / "original", original)
    written = []

    def save_then_interrupt(tensors, filename, metadata=None):
        if written:
            raise KeyboardInterrupt
        written.append(filename)
        save_file(tensors, filename, metadata=metadata)

    save_file = shard_writer.save_file
    monkeypatch.setattr(shard_writer, "save_file", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint(source, tmp_path / "converted", max_shard_size="300KB", progress=False)
    assert len(written) == 1  # one shard had been written when the interrupt came
    assert_nothing_written(tmp_path / "converted")


def test_existing_output_is_refused_without_overwrite_and_replaced_with_it(original, tmp_path):
    source = write_original_checkpoint(tmp_path / "original", original)
    output_dir = tmp_path / "converted"
    output_dir.mkdir()
    (output_dir / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_checkpoint(source, output_dir, progress=False)
    assert [path.name for path in output_dir.iterdir()] == ["keep.txt"]
    convert_checkpoint(source, output_dir, overwrite=True, progress=False)
    assert not (output_dir / "keep.txt").exists() and (output_dir / "model.safetensors").is_file()


def test_vision_tower_with_other_preprocessing_is_refused(original, tmp_path):
    config = json.loads((original.clip_folder / "preprocessor_config.json").read_text())
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({**config, "image_mean": [0.5, 0.5, 0.5]}))
    with pytest.raises(ConversionError, match="image_mean"):
        check_vision_preprocessing(tmp_path, build_image_processor(32))
    check_vision_preprocessing(original.clip_folder, build_image_processor(32))  # the tiny CLIP's own settings pass
