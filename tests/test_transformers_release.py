"""The fuser reads the layers its config names under every transformers release's hidden-state semantics; what
transformers requires of a model class (GenerationMixin a direct base, one query layer checked when built).

The dev venv has one release; the others are run for real by tests/test_integration_transformers_versions.py. Here the
5.17-5.22 meaning of `output_hidden_states=[indices]` (no embeddings entry: index i holds hidden state i + 1, the other
entries None) is reproduced on the vision tower, and the fuser's inputs are compared with the entries of the full
`output_hidden_states=True` tuple of the same tower, whose meaning is the same on every release.
"""

import warnings
import copy
import tomllib
from pathlib import Path

import pytest
import torch
from transformers import GenerationMixin

from modeling_mmfuser_llava import configuration_mmfuser_llava, modeling_mmfuser_llava
from modeling_mmfuser_llava.modeling_mmfuser_llava import MMFuserLlavaForConditionalGeneration

from conftest import chat


def answer_lists_as_releases_5_17_to_5_22(vision_tower, monkeypatch) -> None:
    """Make `vision_tower` treat a list `output_hidden_states` as transformers 5.17-5.22 do."""
    forward = vision_tower.forward

    def forward_of_5_17_to_5_22(pixel_values, output_hidden_states=None, **kwargs):
        if not isinstance(output_hidden_states, (list, tuple)):
            return forward(pixel_values, output_hidden_states=output_hidden_states, **kwargs)
        outputs = forward(pixel_values, output_hidden_states=True, **kwargs)
        kept = set(output_hidden_states)
        layer_outputs = outputs.hidden_states[1:]
        outputs.hidden_states = tuple(state if layer in kept else None for layer, state in enumerate(layer_outputs))
        return outputs

    monkeypatch.setattr(vision_tower, "forward", forward_of_5_17_to_5_22)


def fuser_inputs(model, pixel_values) -> list[torch.Tensor]:
    """The maps the fuser receives in one `get_image_features` call: key/value layers, then the query."""
    received = []
    handle = model.model.fuser.register_forward_pre_hook(lambda module, args: received.append([args[1], args[0]]))
    try:
        with torch.no_grad():
            model.model.get_image_features(pixel_values)
    finally:
        handle.remove()
    (maps,) = received
    return [*maps[0], maps[1]]


@pytest.mark.parametrize("indexing", ["negative", "positive"])
def test_the_fuser_reads_the_configured_layers_under_the_5_17_to_5_22_list_meaning(
    tiny, images, monkeypatch, indexing
):
    model, processor = tiny
    if indexing == "positive":  # the same layers of the 24-layer tower, as a saved trained model names them
        model.config.fuser_key_value_layers = (3, 8, 13, 18)
        model.config.vision_feature_layer = 23
    pixel_values = chat(processor, ["What is in this image?"], images[:1])["pixel_values"]
    with torch.no_grad():
        all_states = model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
    expected = [all_states[index][:, 1:] for index in (3, 8, 13, 18, 23)]

    monkeypatch.setattr(modeling_mmfuser_llava, "SELECTS_HIDDEN_STATES_BY_INDEX", False, raising=False)
    answer_lists_as_releases_5_17_to_5_22(model.model.vision_tower, monkeypatch)
    received = fuser_inputs(model, pixel_values)

    assert len(received) == len(expected)
    for got, want in zip(received, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_a_shorter_hidden_states_tuple_is_refused_not_misread(tiny, images, monkeypatch):
    """Should a release change the list's meaning again, the fuser stops with an error, never reads other layers."""
    model, processor = tiny
    model.config.fuser_key_value_layers = (3, 8, 13, 18)
    model.config.vision_feature_layer = 23
    pixel_values = chat(processor, ["What is in this image?"], images[:1])["pixel_values"]
    monkeypatch.setattr(modeling_mmfuser_llava, "SELECTS_HIDDEN_STATES_BY_INDEX", True, raising=False)
    answer_lists_as_releases_5_17_to_5_22(model.model.vision_tower, monkeypatch)
    refusal = r"returned 24 hidden states where the fuser needs all 25 .* supports transformers>=5\.16\.1,<5\.25"
    with pytest.raises(RuntimeError, match=refusal):
        model.model.get_image_features(pixel_values)


def test_a_caller_selection_of_hidden_states_neither_starves_the_fuser_nor_widens_what_it_gets(tiny, images):
    """transformers 5.24's Llava forward passes the `output_hidden_states=[...]` given to `forward` down to
    `get_image_features`: the fuser still reads its layers (the same features as without), and the caller gets the
    tower's entries it selected, the others None, as the release's own selection gives them."""
    model, processor = tiny
    model.config.fuser_key_value_layers = (3, 8, 13, 18)
    model.config.vision_feature_layer = 23
    pixel_values = chat(processor, ["What is in this image?"], images[:1])["pixel_values"]
    with torch.no_grad():
        unselected = model.model.get_image_features(pixel_values)
        selected = model.model.get_image_features(pixel_values, output_hidden_states=[0, 2, -1])
        full = model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
    torch.testing.assert_close(selected.pooler_output, unselected.pooler_output, rtol=0, atol=0)
    assert len(selected.hidden_states) == len(full) == 25
    assert [index for index, state in enumerate(selected.hidden_states) if state is not None] == [0, 2, 24]
    for index in (0, 2, 24):
        torch.testing.assert_close(selected.hidden_states[index], full[index], rtol=0, atol=0)


@pytest.mark.parametrize("version", ["5.16.1", "5.17.0", "5.23.0", "5.24.0", "5.24.3", "5.24.0.dev0"])
def test_releases_in_the_proven_range_are_accepted(version):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        configuration_mmfuser_llava.check_transformers_release(version)


@pytest.mark.parametrize("version", ["4.57.6", "5.15.1", "5.16.0"])
def test_releases_older_than_the_proven_range_are_refused_naming_it(version):
    with pytest.raises(ImportError, match=rf"support transformers>=5\.16\.1,<5\.25, but transformers {version}"):
        configuration_mmfuser_llava.check_transformers_release(version)


@pytest.mark.parametrize("version", ["5.25.0", "5.25.0.dev0", "6.0.0"])
def test_releases_newer_than_the_proven_range_load_with_a_warning_naming_it(version):
    """A Hub repo must not stop loading when transformers moves on: the run-time layer check guards the fuser."""
    with pytest.warns(UserWarning, match=rf"proven on transformers>=5\.16\.1,<5\.25; transformers {version} is newer"):
        configuration_mmfuser_llava.check_transformers_release(version)


def test_a_list_vision_feature_layer_assigned_after_the_config_is_refused_when_the_model_is_built(tiny):
    """MMFuser's query is one layer: a list slipping in by assignment stops the build, naming the field."""
    config = copy.deepcopy(tiny[0].config)
    config.vision_feature_layer = [-1, -2]
    for model_class in (modeling_mmfuser_llava.MMFuserLlavaModel, MMFuserLlavaForConditionalGeneration):
        with pytest.raises(ValueError, match="vision_feature_layer must be a single int"):
            model_class(config)


def test_generation_mixin_is_a_direct_base_of_the_generation_class():
    assert GenerationMixin in MMFuserLlavaForConditionalGeneration.__bases__


def test_the_package_requires_the_range_the_model_files_accept():
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    requirement = f"transformers{configuration_mmfuser_llava.SUPPORTED_TRANSFORMERS_RANGE}"
    assert requirement in pyproject["project"]["dependencies"]
