"""Converting original-layout checkpoints: the converted model computes what the original computed, in the Hub layout.

The original checkpoints and the original forward come from `original_layout` (hand-written names, stock parts).
"""

import dataclasses
import json
import weakref

import pytest
import torch
from conftest import chat
from original_layout import (  # noqa: F401 (`original` is a fixture)
    IMAGE_TOKEN_INDEX,
    OriginalForward,
    original,
    original_input_ids,
    original_pixel_values,
    original_prompt,
    write_original_checkpoint,
)
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor, GenerationConfig

from modeling_mmfuser_llava import MMFuserLlavaConfig, MMFuserLlavaForConditionalGeneration
from modeling_mmfuser_llava.conversion import convert_checkpoint, converter
from modeling_mmfuser_llava.conversion.new_token_rows import mean_row
from modeling_mmfuser_llava.hub_folder import save_hub_folder

ROTARY_BUFFERS = {f"model.layers.{i}.self_attn.rotary_emb.inv_freq": torch.rand(8) for i in range(2)}
VARIANTS = {
    # .bin shards with the vision weights inside and transformers-4 rotary buffers; pad token = <unk> (LLaVA's v1 setup)
    "bin-with-vision": dict(checkpoint=dict(weight_format="bin", extra_tensors=ROTARY_BUFFERS), max_shard_size="5GB"),
    # safetensors stripped of the vision weights (they come from mm_vision_tower); no pad token; sharded output
    "safetensors-stripped": dict(
        checkpoint=dict(weight_format="safetensors", with_vision=False, pad_token=None), max_shard_size="300KB"
    ),
}
QUESTIONS = ["what is in this image", "which colour is the circle"]


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def conversion(request, original, tmp_path_factory):
    variant = VARIANTS[request.param]
    root = tmp_path_factory.mktemp(request.param)
    source = write_original_checkpoint(root / "original", original, **variant["checkpoint"])
    summary = convert_checkpoint(source, root / "converted", max_shard_size=variant["max_shard_size"], progress=False)
    return request.param, summary


def expand_placeholder(input_ids: list[int], image_token_index: int, image_seq_length: int) -> list[int]:
    position = input_ids.index(IMAGE_TOKEN_INDEX)
    return input_ids[:position] + [image_token_index] * image_seq_length + input_ids[position + 1 :]


def assert_reproduces_the_original(original, output_dir, images, new_tokens: tuple[int, ...] = (6, 0)) -> list[float]:
    """The converted model at `output_dir` gets the original's ids and pixels and gives its logits, per question, and
    its greedy tokens for as many new tokens as asked (0: logits only). Returns the max abs logit difference per
    question: converted model vs `OriginalForward` (stock CLIP and Llama, the reference fuser)."""
    differences = []
    model = AutoModelForImageTextToText.from_pretrained(output_dir, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(output_dir)
    reference = OriginalForward(original)
    for question, image, tokens in zip(QUESTIONS, images[::2], new_tokens):  # wide, tall: padding matters
        inputs = chat(processor, [question], [image])
        input_ids = original_input_ids(original, original_prompt(question))
        assert inputs["input_ids"][0].tolist() == expand_placeholder(
            input_ids, model.config.image_token_index, model.config.image_seq_length
        )
        pixel_values = original_pixel_values(original, image)
        torch.testing.assert_close(inputs["pixel_values"], pixel_values, rtol=0, atol=1e-6)
        with torch.no_grad():
            logits = model(**inputs).logits[0]
        expected = reference.logits(input_ids, pixel_values)[0]
        differences.append((logits[:, : original.vocab_size] - expected).abs().max().item())
        assert differences[-1] <= 1e-4
        if tokens:
            generated = model.generate(**inputs, max_new_tokens=tokens, do_sample=False)
            assert generated[0, inputs["input_ids"].shape[1] :].tolist() == reference.greedy(
                input_ids, pixel_values, max_new_tokens=tokens
            )
    return differences


def test_converted_model_reproduces_the_original_logits_and_greedy_tokens(original, conversion, images):
    assert_reproduces_the_original(original, conversion[1].output_dir, images)


def test_a_non_default_layer_list_is_carried_over(original, images, tmp_path):
    """The converted config takes the original's mm_vision_select_layer, and the model then fuses those layers."""
    layers = (-20, -15, -10, -5, -1)
    other = dataclasses.replace(original, select_layers=layers)
    source = write_original_checkpoint(tmp_path / "original", other, weight_format="safetensors")
    summary = convert_checkpoint(source, tmp_path / "converted", progress=False)
    config = MMFuserLlavaConfig.from_pretrained(summary.output_dir)
    assert (config.fuser_key_value_layers, config.vision_feature_layer) == (layers[:4], layers[-1])
    assert_reproduces_the_original(other, summary.output_dir, images, new_tokens=(0, 0))


def test_fuser_gates_are_carried_over(original, conversion):
    _, summary = conversion
    model = MMFuserLlavaForConditionalGeneration.from_pretrained(summary.output_dir)
    for gate in ("gamma1", "gamma2"):
        expected = original.weights[f"model.mm_projector.0.{gate}"]
        assert expected.abs().min() > 0  # the fixture's gates are far from their zero initialisation
        assert torch.equal(getattr(model.model.fuser, gate).data, expected)


def test_added_tokens_get_the_mean_of_the_original_rows(original, conversion):
    variant, summary = conversion
    assert summary.added_tokens == (["<image>"] if variant == "bin-with-vision" else ["<image>", "<pad>"])
    model = MMFuserLlavaForConditionalGeneration.from_pretrained(summary.output_dir)
    vocab = original.vocab_size
    for converted, source in (
        (model.get_input_embeddings().weight.data, original.weights["model.embed_tokens.weight"]),
        (model.lm_head.weight.data, original.weights["lm_head.weight"]),
    ):
        assert converted.shape[0] == vocab + len(summary.added_tokens)
        assert torch.equal(converted[:vocab], source)
        for row in converted[vocab:]:
            assert torch.equal(row, mean_row(source).float())


def test_dropped_tensors_are_reported_with_their_reason(conversion):
    variant, summary = conversion
    if variant == "bin-with-vision":
        assert set(summary.dropped) == set(ROTARY_BUFFERS)
        assert all("rotary" in reason for reason in summary.dropped.values())
        assert summary.vision_weights_from == "the checkpoint"
    else:  # the vision weights come from a full CLIP checkpoint, whose text half is not used
        assert summary.dropped and all(
            name.startswith(("text_model.", "text_projection.", "visual_projection.", "logit_scale"))
            for name in summary.dropped
        )
        assert set(summary.dropped.values()) == {"CLIP's text half and projections"}
        assert summary.vision_weights_from != "the checkpoint"


def test_output_is_what_save_hub_folder_writes(conversion, tmp_path):
    """The converted model, rebuilt from its config and weights and saved with save_hub_folder: the same files."""
    variant, summary = conversion
    model = MMFuserLlavaForConditionalGeneration(MMFuserLlavaConfig.from_pretrained(summary.output_dir))
    weights = {}
    for shard in summary.shards:
        weights.update(load_file(summary.output_dir / shard))
    model.load_state_dict(weights, strict=True)
    model.generation_config = GenerationConfig.from_pretrained(summary.output_dir)
    resaved = save_hub_folder(
        model, AutoProcessor.from_pretrained(summary.output_dir), tmp_path / "resaved",
        max_shard_size=VARIANTS[variant]["max_shard_size"],
    )
    converted_files = {path.name for path in summary.output_dir.iterdir()} - {"README.md"}
    assert converted_files == {path.name for path in resaved.iterdir()}
    for name in converted_files:
        if name.endswith(".safetensors"):
            converted, expected = load_file(summary.output_dir / name), load_file(resaved / name)
            assert converted.keys() == expected.keys()
            assert all(torch.equal(converted[key], expected[key]) for key in expected)
        elif name.endswith(".json"):
            converted, expected = (json.loads((folder / name).read_text()) for folder in (summary.output_dir, resaved))
            for bookkeeping in ("is_local", "local_files_only"):  # what transformers records of a tokenizer's loading
                converted.pop(bookkeeping, None), expected.pop(bookkeeping, None)
            assert converted == expected, name
        else:
            assert (summary.output_dir / name).read_bytes() == (resaved / name).read_bytes(), name


def test_shards_respect_the_maximum_size_and_the_index_covers_them(conversion):
    variant, summary = conversion
    index_path = summary.output_dir / "model.safetensors.index.json"
    if variant == "bin-with-vision":
        assert summary.shards == ["model.safetensors"] and not index_path.exists()
        return
    weight_map = json.loads(index_path.read_text())["weight_map"]
    assert len(summary.shards) > 1 and sorted(set(weight_map.values())) == sorted(summary.shards)
    for shard in summary.shards:
        with safe_open(summary.output_dir / shard, "pt") as handle:
            names = list(handle.keys())
            sizes = [handle.get_slice(name).get_shape() for name in names]
            shard_bytes = sum(torch.Size(shape).numel() * 4 for shape in sizes)
        assert shard_bytes <= 300_000 or len(names) == 1
        assert all(weight_map[name] == shard for name in names)
    assert len(weight_map) == summary.tensors


def test_converting_twice_gives_byte_identical_files(original, tmp_path):
    """Every file, the model card included (same folder name, two parents); also with the reader unmapping its file
    after every tensor (release_bytes=0) on the second run."""
    source = write_original_checkpoint(tmp_path / "original", original, weight_format="safetensors", with_vision=False)
    first, second = (
        convert_checkpoint(
            source, tmp_path / parent / "mmfuser", max_shard_size="300KB", progress=False, release_bytes=release_bytes
        ).output_dir
        for parent, release_bytes in (("first", None), ("second", 0))
    )
    names = sorted(path.name for path in first.iterdir())
    assert names == sorted(path.name for path in second.iterdir()) and len(names) > 10 and "README.md" in names
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_at_most_one_output_shard_is_in_memory_at_once(original, tmp_path, monkeypatch):
    """The streaming design: every output tensor is loaded while its shard is filled and freed once it is written."""
    live = {"bytes": 0, "peak": 0}
    load = converter._load

    def release(nbytes: int) -> None:
        live["bytes"] -= nbytes

    def tracked_load(*args) -> torch.Tensor:
        tensor = load(*args)
        live["bytes"] += tensor.nbytes
        live["peak"] = max(live["peak"], live["bytes"])
        weakref.finalize(tensor, release, tensor.nbytes)
        return tensor

    monkeypatch.setattr(converter, "_load", tracked_load)
    source = write_original_checkpoint(tmp_path / "original", original, weight_format="safetensors", num_shards=3)
    summary = convert_checkpoint(source, tmp_path / "converted", max_shard_size="300KB", progress=False)
    shard_bytes = [
        sum(tensor.nbytes for tensor in load_file(summary.output_dir / shard).values()) for shard in summary.shards
    ]
    assert len(shard_bytes) > 3 and live["bytes"] == 0
    assert 0 < live["peak"] <= max(shard_bytes) < sum(shard_bytes) / 3


def test_dtype_option_casts_every_weight(original, tmp_path):
    source = write_original_checkpoint(tmp_path / "original", original, weight_format="safetensors")
    summary = convert_checkpoint(source, tmp_path / "converted", dtype="bfloat16", progress=False)
    tensors = load_file(summary.output_dir / "model.safetensors")
    assert {tensor.dtype for tensor in tensors.values()} == {torch.bfloat16}
    assert json.loads((summary.output_dir / "config.json").read_text())["dtype"] == "bfloat16"
    assert torch.equal(
        tensors["model.fuser.gamma1"], original.weights["model.mm_projector.0.gamma1"].to(torch.bfloat16)
    )


if __name__ == "__main__":  # the docs' figures: PYTHONPATH=tests .venv/bin/python tests/test_conversion.py
    import tempfile
    from pathlib import Path

    from conftest import sample_images
    from original_layout import make_original_model, write_tiny_clip

    with tempfile.TemporaryDirectory() as scratch:
        emulated = make_original_model(write_tiny_clip(Path(scratch) / "clip"))
        for name, variant in VARIANTS.items():
            source = write_original_checkpoint(Path(scratch) / name, emulated, **variant["checkpoint"])
            converted = convert_checkpoint(source, Path(scratch) / f"{name}-converted", progress=False).output_dir
            found = assert_reproduces_the_original(emulated, converted, sample_images())
            print(f"{name}: converted vs emulated original, max abs logit difference per question "
                  f"{', '.join(f'{value:.1e}' for value in found)} (float32; greedy tokens equal)")
