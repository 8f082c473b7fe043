"""transformers' common model and config tests (ModelTesterMixin, ConfigTester of the running release) on MMFuser-LLaVA.

A tiny MMFuser-LLaVA in the shape of transformers' Llava test: a 2-layer CLIP tower whose two hidden states after the
embeddings feed the fuser, a 2-layer Llama, one image per sample. Tests that cannot apply to MMFuser are skipped with
the reason; everything else runs as transformers runs it for its own models.
"""

import unittest
import unittest.mock

import torch
from transformers import CLIPVisionConfig, LlamaConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES, MODEL_MAPPING_NAMES

from modeling_mmfuser_llava import (
    MMFuserLlavaConfig,
    MMFuserLlavaForConditionalGeneration,
    MMFuserLlavaModel,
)

from . import use_transformers_tests

use_transformers_tests()  # transformers' own test files of the running release, fetched from its sdist (cached)

from .generation.test_utils import GenerationTesterMixin  # noqa: E402  (the project's stand-in)
from .test_configuration_common import ConfigTester  # noqa: E402  (transformers')
from .test_modeling_common import ModelTesterMixin, floats_tensor, ids_tensor  # noqa: E402  (transformers')


class MMFuserLlavaModelTester:
    def __init__(self, parent, batch_size: int = 3, text_length: int = 7, is_training: bool = True):
        self.parent = parent
        self.batch_size = batch_size
        self.is_training = is_training
        self.image_token_index = 0
        self.image_size, self.patch_size = 8, 2
        self.image_seq_length = (self.image_size // self.patch_size) ** 2
        self.seq_length = text_length + self.image_seq_length
        self.text_config = {
            "model_type": "llama",
            "vocab_size": 99,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "intermediate_size": 37,
            "hidden_act": "gelu",
            "max_position_embeddings": 512,
            "initializer_range": 0.02,
            "pad_token_id": 1,
        }
        self.vision_config = {
            "model_type": "clip_vision_model",
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "num_channels": 3,
            "hidden_size": 32,
            "projection_dim": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 37,
            "initializer_range": 0.02,
        }
        # transformers' common tests read these from the tester
        self.vocab_size = self.text_config["vocab_size"]
        self.hidden_size = self.text_config["hidden_size"]
        self.num_hidden_layers = self.text_config["num_hidden_layers"]
        self.num_attention_heads = self.text_config["num_attention_heads"]
        self.pad_token_id = self.text_config["pad_token_id"]

    def get_config(self) -> MMFuserLlavaConfig:
        return MMFuserLlavaConfig(
            text_config=LlamaConfig(**{k: v for k, v in self.text_config.items() if k != "model_type"}),
            vision_config=CLIPVisionConfig(**{k: v for k, v in self.vision_config.items() if k != "model_type"}),
            image_token_index=self.image_token_index,
            image_seq_length=self.image_seq_length,
            projector_hidden_act="gelu",
            vision_feature_select_strategy="default",
            vision_feature_layer=-1,
            fuser_key_value_layers=(1, 2),
            fuser_num_heads=4,
            fuser_num_points=2,
        )

    def prepare_config_and_inputs_for_common(self) -> tuple[MMFuserLlavaConfig, dict]:
        config = self.get_config()
        pixel_values = floats_tensor([self.batch_size, 3, self.image_size, self.image_size])
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size - 2) + 2  # no image or pad token
        input_ids[:, : self.image_seq_length] = self.image_token_index
        attention_mask = torch.ones(input_ids.shape, dtype=torch.long, device=input_ids.device)
        return config, {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask}


class MMFuserLlavaModelTest(ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    all_model_classes = (MMFuserLlavaModel, MMFuserLlavaForConditionalGeneration)
    _is_composite = True
    # The fuser reads hidden states of the vision tower, which come before CLIP's post_layernorm (as LLaVA's do): that
    # LayerNorm never gets a gradient, so "every parameter has a gradient" cannot hold.
    test_all_params_have_gradient = False

    def setUp(self):
        # The common tests tell base models (no loss: no training tests) and image-text-to-text models (labels) apart
        # by transformers' built-in name tables, which a remote-code model cannot be in: add MMFuser-LLaVA's classes to
        # them for the test's duration, as if it were a transformers model.
        for table, class_name in (
            (MODEL_MAPPING_NAMES, MMFuserLlavaModel.__name__),
            (MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES, MMFuserLlavaForConditionalGeneration.__name__),
        ):
            registration = unittest.mock.patch.dict(table, {MMFuserLlavaConfig.model_type: class_name})
            registration.start()
            self.addCleanup(registration.stop)
        self.model_tester = MMFuserLlavaModelTester(self)
        self.config_tester = ConfigTester(self, config_class=MMFuserLlavaConfig, has_text_modality=False)

    def test_config(self):
        self.config_tester.run_common_tests()
