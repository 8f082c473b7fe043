"""On a CUDA GPU (`make gpu-check`): half precision, bitsandbytes, the attention backends and a bf16 training step,
each on the bundled trained tiny model and its questions, held to float32's greedy answers. Skipped elsewhere."""

import importlib.util

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from modeling_mmfuser_llava.demo import answer_batch, load_for_inference, write_trained_tiny_hub_folder

from conftest import bundled_questions, chat, linear_types

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here): `make gpu-check` on one"),
]

FULL_PRECISION_PARTS = {"vision_tower", "fuser", "multi_modal_projector", "lm_head"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_trained_tiny_hub_folder(tmp_path_factory.mktemp("gpu") / "trained-tiny")


@pytest.fixture(scope="module")
def questions():
    return bundled_questions()


def answers(model, processor, questions, one_at_a_time: bool = False) -> list[str]:
    """Greedy answers to the bundled questions: as one left-padded batch, or one by one (no padding, no mask: what
    the flash backend of SDPA takes)."""
    images, prompts, _ = questions
    if one_at_a_time:
        return [answer_batch(model, processor, [image], [prompt], 8)[0] for image, prompt in zip(images, prompts)]
    return answer_batch(model, processor, images, prompts, max_new_tokens=8)


@pytest.fixture(scope="module")
def float32_answers(folder, questions):
    model, processor = load_for_inference(folder, "cuda", dtype=torch.float32)
    found = answers(model, processor, questions)
    assert found == questions[2], "the bundled model must answer every bundled question right in float32"
    return found


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_generates_the_float32_answers(folder, questions, float32_answers, dtype):
    model, processor = load_for_inference(folder, "cuda", dtype=dtype)
    assert model.model.fuser.gamma1.dtype == dtype and model.device.type == "cuda"
    assert answers(model, processor, questions) == float32_answers


@pytest.mark.parametrize(("load", "quantized_type"), [("load_in_4bit", "Linear4bit"), ("load_in_8bit", "Linear8bitLt")])
def test_bitsandbytes_quantizes_the_language_model_only_and_answers(folder, questions, float32_answers, load,
                                                                    quantized_type):
    pytest.importorskip("bitsandbytes", reason="the `quantization` extra (bitsandbytes) is not installed")
    model, processor = load_for_inference(folder, "cuda", dtype=torch.float16, **{load: True})
    assert linear_types(model) == {"language_model": {quantized_type}, **dict.fromkeys(FULL_PRECISION_PARTS, {"Linear"})}
    assert model.model.fuser.gamma1.dtype == torch.float16
    assert answers(model, processor, questions) == float32_answers  # on the CPU, NF4 and 8-bit answer all 16 right


@pytest.mark.parametrize("backend", ["eager", "sdpa", "sdpa-flash"])
def test_attention_backends_give_the_float32_answers_in_bfloat16(folder, questions, float32_answers, backend):
    """eager and SDPA in the language model and the vision tower; `sdpa-flash` holds SDPA to its flash kernel (it
    raises rather than fall back where flash cannot run), so the answers come one question at a time, unpadded."""
    implementation = backend.removesuffix("-flash")
    model, processor = load_for_inference(folder, "cuda", dtype=torch.bfloat16, attn_implementation=implementation)
    assert model.model.vision_tower.config._attn_implementation == implementation
    assert model.model.language_model.config._attn_implementation == implementation
    if backend == "sdpa-flash":
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            found = answers(model, processor, questions, one_at_a_time=True)
    else:
        found = answers(model, processor, questions)
    assert found == float32_answers


def test_bfloat16_training_step_with_activation_checkpointing(tiny, images):
    """Checkpointing recomputes the fuser, the tower and the language model in backward: the same loss and gradients
    as without it, finite, and reaching the fuser, the projector and the language model."""
    model, processor = tiny
    model = model.to("cuda", torch.bfloat16).train()
    model.model.vision_tower.requires_grad_(False)
    inputs = chat(processor, ["What is in this image?", "Which colour is the large circle?"], images[:2]).to("cuda")
    inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    labels = labels.masked_fill(labels == model.config.image_token_id, -100)

    def step():
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        gradients = {name: parameter.grad.float().clone() for name, parameter in model.named_parameters()
                     if parameter.grad is not None}
        model.zero_grad(set_to_none=True)
        return loss.float(), gradients

    plain_loss, plain_gradients = step()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    loss, gradients = step()
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, plain_loss, rtol=1e-2, atol=1e-2)
    assert gradients.keys() == plain_gradients.keys()
    for part in ("model.fuser.", "model.multi_modal_projector.", "model.language_model."):
        assert any(name.startswith(part) and gradient.abs().max() > 0 for name, gradient in gradients.items()), part
    for name, gradient in gradients.items():
        assert torch.isfinite(gradient).all(), name
        torch.testing.assert_close(gradient, plain_gradients[name], rtol=2e-2, atol=2e-2 * gradient.abs().max().item())


FLASH_ATTN_MISSING = (
    "flash-attn is not installed: PyPI has only its source, whose CUDA build takes far longer than a GPU lease "
    "(docs/quantization-and-attention.md)"
)


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason=FLASH_ATTN_MISSING)
def test_flash_attention_2_gives_the_float32_answers(folder, questions, float32_answers):
    model, processor = load_for_inference(folder, "cuda", dtype=torch.bfloat16, attn_implementation="flash_attention_2")
    assert model.model.language_model.config._attn_implementation == "flash_attention_2"
    assert answers(model, processor, questions) == float32_answers
