"""torch.compile with inductor (generated C++ on the CPU): a training step with images has eager mode's values and
gradients. Code generation takes minutes on a small CPU (less once inductor's on-disk cache is warm), hence
an integration test; tests/test_compile.py checks graph capture in seconds with the eager/aot_eager backends."""

import pytest
import torch
from transformers import CLIPVisionConfig

from modeling_mmfuser_llava.tiny import build_tiny_model

from conftest import chat, perturb_fuser

pytestmark = pytest.mark.integration


def test_inductor_training_step_with_images_equals_eager(images):
    """One compiled graph (tower, fuser, projector, language model, loss) and its backward against eager mode."""
    shallow = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=4, image_size=32, patch_size=4
    )
    model, processor = build_tiny_model(vision_config=shallow, fuser_key_value_layers=(1, 2, 3, 4))
    perturb_fuser(model)
    model.model.vision_tower.requires_grad_(False)  # stage 2: tower frozen, the rest trained
    inputs = chat(processor, ["What is in this image?", "Colour?"], images[:2])
    inputs["labels"] = inputs["input_ids"].masked_fill(inputs["input_ids"] == model.config.image_token_id, -100)
    results = []
    for compiled in (False, True):
        # Compiled after the eager run, which installs transformers' output-capturing hooks (a lock dynamo cannot
        # enter): a model compiled with fullgraph=True before any eager call fails there.
        candidate = torch.compile(model, fullgraph=True, backend="inductor") if compiled else model
        outputs = candidate(**inputs)
        outputs.loss.backward()
        gradients = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
        results.append((outputs.logits, outputs.loss, gradients))
        model.zero_grad(set_to_none=True)
    (eager_logits, eager_loss, eager_gradients), (logits, loss, gradients) = results
    torch.testing.assert_close(logits, eager_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-5)
    assert gradients.keys() == eager_gradients.keys()
    assert any(name.startswith("model.fuser.cross_attn.sampling_offsets") for name in gradients)
    for name, eager_gradient in eager_gradients.items():
        assert eager_gradient.abs().max() > 0, name
        scale = eager_gradient.abs().max().item()
        torch.testing.assert_close(
            gradients[name], eager_gradient, rtol=0, atol=1e-4 * scale, msg=lambda text: f"{name}: {text}"
        )
