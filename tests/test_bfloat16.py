"""bf16, what GPU users run, checked on the CPU: the fuser against the authors' block's outputs, and the whole model
against float32 on the bundled questions (the same greedy answers, bounded score differences)."""

import pytest
import torch

from modeling_mmfuser_llava import MMFuserLlavaForConditionalGeneration
from modeling_mmfuser_llava.demo import TRAINED_TINY_MODEL, answer_batch, conversation_inputs, user_message

from conftest import bundled_questions
from test_fuser_parity import block_for_fixture

# Measured (bf16 against the authors' float32 output at CLIP-L/336): relative 2.5e-3, largest 0.13. With the sampling
# core left in bf16 (the float32 casts of MMFuserDeformableAttention missing): 5.0e-3 and 0.50.
FUSER_RELATIVE_BOUND, FUSER_LARGEST_BOUND = 3.5e-3, 0.25


def test_bfloat16_fuser_stays_near_the_original_block(shared_fixtures):
    block, features, expected = block_for_fixture(shared_fixtures / "mmfuser_block_clip_l336.safetensors")
    block = block.to(torch.bfloat16)
    with torch.no_grad():
        fused = block(features[-1].bfloat16(), [level.bfloat16() for level in features[:-1]])
    assert fused.dtype == torch.bfloat16
    difference = fused.float() - expected
    assert difference.norm() / expected.norm() < FUSER_RELATIVE_BOUND
    assert difference.abs().max() < FUSER_LARGEST_BOUND


@pytest.fixture(scope="module")
def float32_and_bfloat16():
    return [
        MMFuserLlavaForConditionalGeneration.from_pretrained(TRAINED_TINY_MODEL, dtype=dtype).eval()
        for dtype in (torch.float32, torch.bfloat16)
    ]


@pytest.fixture(scope="module")
def processor():
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(TRAINED_TINY_MODEL)


def test_bfloat16_model_gives_the_float32_answers(float32_and_bfloat16, processor):
    images, questions, answers = bundled_questions()
    full, half = (answer_batch(model, processor, images, questions, max_new_tokens=8) for model in float32_and_bfloat16)
    assert full == answers
    differing = sum(ours != theirs for ours, theirs in zip(half, full))
    assert differing == 0, f"{differing} of {len(full)} bf16 answers differ from float32's"


# Measured over the 16 questions' prompts and 4 greedy tokens, every token of the vocabulary: largest 0.26 (0.05 on
# the greedy tokens), mean 0.023 (log-probabilities; the sampling core's float32 casts change neither, the fuser test
# above catches their loss).
SCORE_LARGEST_BOUND, SCORE_MEAN_BOUND = 0.4, 0.05


def scores_along(model, inputs, continuation) -> torch.Tensor:
    """Log-probabilities of every next token along `continuation` (prompt + greedy answer), in float32."""
    prompt_mask = inputs["attention_mask"]  # left padding
    answer_mask = prompt_mask.new_ones(len(continuation), continuation.shape[1] - prompt_mask.shape[1])
    mask = torch.cat([prompt_mask, answer_mask], 1)
    with torch.no_grad():
        logits = model(input_ids=continuation, attention_mask=mask,
                       pixel_values=inputs["pixel_values"].to(model.dtype)).logits
    return logits[:, inputs["input_ids"].shape[1] - 1 : -1].float().log_softmax(-1)


def test_bfloat16_scores_stay_near_float32s(float32_and_bfloat16, processor):
    full, half = float32_and_bfloat16
    images, questions, _ = bundled_questions()
    inputs = conversation_inputs(full, processor, images, [[user_message(question)] for question in questions])
    with torch.no_grad():
        continuation = full.generate(**inputs, max_new_tokens=4, do_sample=False)
    reference, ours = scores_along(full, inputs, continuation), scores_along(half, inputs, continuation)
    difference = (ours - reference).abs()
    assert difference.max() < SCORE_LARGEST_BOUND and difference.mean() < SCORE_MEAN_BOUND
    # The bound is far below what reading another picture changes (largest 10.5): a model that lost the image fails.
    other_pictures = {**inputs, "pixel_values": inputs["pixel_values"].roll(4, 0)}  # each question, another picture
    misread = (scores_along(full, other_pictures, continuation) - reference).abs()
    assert misread.max() > 3 * SCORE_LARGEST_BOUND
