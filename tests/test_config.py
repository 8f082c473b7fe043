"""MMFuserLlavaConfig: the paper's defaults, Auto registration, serialisation, and clear errors for bad settings."""

import pytest
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, LlavaConfig

from modeling_mmfuser_llava import (
    MMFuserLlavaConfig,
    MMFuserLlavaForConditionalGeneration,
    MMFuserLlavaModel,
)


def test_defaults_are_the_papers():
    config = MMFuserLlavaConfig()
    assert isinstance(config, LlavaConfig)
    assert config.model_type == "mmfuser_llava"
    assert config.vision_feature_layer == -2
    assert config.fuser_key_value_layers == (-22, -17, -12, -7)
    assert (config.fuser_num_heads, config.fuser_num_points, config.fuser_layer_norm_eps) == (16, 4, 1e-6)
    assert config.fuser_attention_type == "deformable"
    # CLIP ViT-L/14-336: 25 hidden states, so the indices are layers 3/8/13/18 and the query is layer 23.
    assert [index % 25 for index in config.fuser_hidden_state_indices] == [3, 8, 13, 18, 23]
    assert config.image_seq_length == 576 == config.vision_grid_size**2


def test_registered_with_auto_classes():
    config = AutoConfig.for_model("mmfuser_llava")
    assert type(config) is MMFuserLlavaConfig
    assert AutoModel._model_mapping[MMFuserLlavaConfig] is MMFuserLlavaModel
    assert AutoModelForImageTextToText._model_mapping[MMFuserLlavaConfig] is MMFuserLlavaForConditionalGeneration
    assert set(config.auto_map) == {"AutoConfig", "AutoModel", "AutoModelForImageTextToText"}


def test_json_round_trip(tmp_path, tiny_pristine):
    config = tiny_pristine[0].config
    config.save_pretrained(tmp_path)
    reloaded = MMFuserLlavaConfig.from_pretrained(tmp_path)
    assert reloaded.fuser_key_value_layers == config.fuser_key_value_layers  # a list in JSON, a tuple again here
    assert reloaded.to_dict() == config.to_dict()


@pytest.mark.parametrize(
    ("settings", "field", "allowed"),
    [
        (dict(vision_feature_layer=25), "vision_feature_layer", "from -25 to 24"),
        (dict(vision_feature_layer=[-2, -5]), "vision_feature_layer", "single int"),
        (dict(fuser_key_value_layers=(3, -30)), "fuser_key_value_layers", "from -25 to 24"),
        (dict(fuser_key_value_layers=()), "fuser_key_value_layers", "at least one"),
        (dict(fuser_num_heads=12), "fuser_num_heads", "divisor of the vision hidden size 1024"),
        (dict(fuser_num_points=0), "fuser_num_points", "at least 1"),
        (dict(fuser_layer_norm_eps=0.0), "fuser_layer_norm_eps", "positive"),
        (dict(fuser_num_heads="4"), "fuser_num_heads", "expected int"),
        (dict(vision_feature_select_strategy="foo"), "vision_feature_select_strategy", "('default', 'full')"),
        (dict(fuser_attention_type="sparse"), "fuser_attention_type", "('deformable', 'global', 'linear_sra')"),
        (dict(image_seq_length=577), "image_seq_length", "24**2 = 576"),
        (
            dict(vision_config=dict(model_type="clip_vision_model", num_hidden_layers=24, image_size=300, patch_size=14)),
            "image_size",
            "multiple",
        ),
    ],
)
def test_invalid_settings_name_the_field(settings, field, allowed):
    with pytest.raises(ValueError, match=field) as error:
        MMFuserLlavaConfig(**settings)
    assert allowed in str(error.value)


def test_assigning_a_wrong_type_later_raises_a_value_error_too():
    config = MMFuserLlavaConfig()
    with pytest.raises(ValueError, match="fuser_num_points.*expected int"):
        config.fuser_num_points = "4"


def test_repeated_layers_are_accepted_as_in_the_original():
    """The original indexes hidden_states with its layer list as given, repeats included: a converted one may too."""
    config = MMFuserLlavaConfig(fuser_key_value_layers=(-22, -22, -12, -2), vision_feature_layer=-2)
    assert config.fuser_hidden_state_indices == [-22, -22, -12, -2, -2]
