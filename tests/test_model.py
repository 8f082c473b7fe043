"""MMFuserLlavaForConditionalGeneration behaves as a Transformers Llava: identity at init, generate, save/load, training."""

import copy

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import SiglipVisionConfig

from modeling_mmfuser_llava import MMFuserLlavaForConditionalGeneration
from modeling_mmfuser_llava.tiny import TINY_IMAGE_SIZE, TINY_PATCH_SIZE, build_tiny_model

from conftest import assert_original_initialisation, chat, perturb_fuser, plain_llava_with_same_weights


def test_identity_to_llava_at_initialisation(tiny_pristine, images):
    model, processor = tiny_pristine
    inputs = chat(processor, ["What is in this image?", "Describe the picture"], images[:2])
    llava = plain_llava_with_same_weights(model)
    with torch.no_grad():
        ours, theirs = model(**inputs).logits, llava(**inputs).logits
    assert torch.equal(ours, theirs)


def test_a_trained_fuser_changes_the_logits(tiny, images):
    """The identity test above is meaningful only if the fuser reaches the logits once its gates open."""
    model, processor = tiny
    inputs = chat(processor, ["What is in this image?"], images[:1])
    with torch.no_grad():
        difference = (model(**inputs).logits - plain_llava_with_same_weights(model)(**inputs).logits).abs().max()
    assert difference > 1e-3


def test_one_vision_pass_per_generate(tiny, images):
    model, processor = tiny
    calls = []
    handle = model.model.vision_tower.register_forward_hook(lambda module, args, output: calls.append(output))
    try:
        inputs = chat(processor, ["What is in this image?"], images[:1])
        model.generate(**inputs, max_new_tokens=6, do_sample=False)
    finally:
        handle.remove()
    assert len(calls) == 1
    kept = [index for index, state in enumerate(calls[0].hidden_states) if state is not None]
    assert kept == [3, 8, 13, 18, 23]  # only the fuser's layers are kept from that one pass


def greedy(model, inputs, **kwargs) -> torch.Tensor:
    output = model.generate(**inputs, max_new_tokens=8, do_sample=False, min_new_tokens=8, **kwargs)
    return output[:, inputs["input_ids"].shape[1] :]


def test_batched_left_padded_generation_equals_one_by_one(tiny, images):
    model, processor = tiny
    questions = ["What is in this image?", "How many shapes are there in the picture on the left?", "Colour?"]
    assert processor.tokenizer.padding_side == "left"
    batch = chat(processor, questions, images)
    assert (batch["attention_mask"] == 0).any()  # the prompts really differ in length
    batched = greedy(model, batch)
    for row, (question, image) in enumerate(zip(questions, images)):
        assert torch.equal(batched[row], greedy(model, chat(processor, [question], [image]))[0])


def test_kv_cache_does_not_change_greedy_output(tiny, images):
    model, processor = tiny
    inputs = chat(processor, ["What is in this image?"], images[:1])
    assert torch.equal(greedy(model, inputs, use_cache=True), greedy(model, inputs, use_cache=False))


def test_sampling_is_seeded_and_differs_from_greedy(tiny, images):
    model, processor = tiny
    inputs = chat(processor, ["What is in this image?"], images[:1])
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append(model.generate(**inputs, max_new_tokens=12, min_new_tokens=12, do_sample=True, temperature=1.5))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0][:, inputs["input_ids"].shape[1] :][:, :8], greedy(model, inputs))


def test_several_images_in_one_prompt(tiny, images):
    model, processor = tiny
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Same?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert "USER: <image>\n<image>\nSame? ASSISTANT:" in text
    forward = processor(images=images[:2], text=[text], return_tensors="pt")
    swapped = processor(images=images[1::-1], text=[text], return_tensors="pt")
    assert (forward["input_ids"] == model.config.image_token_id).sum() == 2 * model.config.image_seq_length
    with torch.no_grad():
        logits, logits_swapped = model(**forward).logits, model(**swapped).logits
    assert not torch.allclose(logits, logits_swapped)  # each image lands in its own place
    assert greedy(model, forward).shape == (1, 8)


def test_bfloat16_matches_float32(tiny, images):
    model, processor = tiny
    inputs = chat(processor, ["What is in this image?"], images[:1])
    with torch.no_grad():
        reference = model(**inputs).logits
        half = copy.deepcopy(model).to(torch.bfloat16)
        logits = half(**{**inputs, "pixel_values": inputs["pixel_values"].bfloat16()}).logits
    assert logits.dtype == torch.bfloat16
    relative = (logits.float() - reference).norm() / reference.norm()
    assert relative < 3e-2
    assert greedy(half, {**inputs, "pixel_values": inputs["pixel_values"].bfloat16()}).shape == (1, 8)


def test_save_and_load_keeps_every_weight_including_the_gates(tiny, images, tmp_path):
    model, processor = tiny
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert {"model.fuser.gamma1", "model.fuser.gamma2"} <= set(saved)  # no renaming of "gamma" keys
    reloaded = MMFuserLlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key
    inputs = chat(processor, ["What is in this image?"], images[:1])
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, model(**inputs).logits)


def test_original_initialisation_survives_loading_without_fuser_weights(tiny, tmp_path):
    """Upcycling loads a checkpoint that has no fuser: from_pretrained must initialise it as the original does."""
    model, _ = tiny
    model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    state = load_file(weights)
    save_file({k: v for k, v in state.items() if not k.startswith("model.fuser.")}, weights, metadata={"format": "pt"})
    reloaded = MMFuserLlavaForConditionalGeneration.from_pretrained(tmp_path)
    assert_original_initialisation(reloaded.model.fuser)
    assert torch.equal(reloaded.lm_head.weight, model.lm_head.weight)


def test_device_map_auto_keeps_the_fuser_whole(tiny, tmp_path, images):
    model, processor = tiny
    model.save_pretrained(tmp_path)
    assert "MMFuserBlock" in model._no_split_modules
    loaded = MMFuserLlavaForConditionalGeneration.from_pretrained(tmp_path, device_map="auto")
    assert "MMFuserBlock" in loaded._no_split_modules
    assert {str(parameter.device) for parameter in loaded.model.fuser.parameters()} == {"cpu"}
    inputs = chat(processor, ["What is in this image?"], images[:1])
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, model(**inputs).logits)


def test_gradient_checkpointing_gives_the_same_gradients(tiny, images):
    model, processor = tiny
    inputs = chat(processor, ["What is in this image?"], images[:1])
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == model.config.image_token_id, -100)

    def fuser_gradients(checkpointing: bool) -> list[torch.Tensor]:
        trained = copy.deepcopy(model).train()
        if checkpointing:
            trained.activation_checkpointing_enable()
            assert trained.is_activation_checkpointing
        trained(**inputs, labels=labels).loss.backward()
        return [parameter.grad for parameter in trained.model.fuser.parameters()]

    plain, checkpointed = fuser_gradients(False), fuser_gradients(True)
    assert all(gradient is not None and gradient.abs().sum() > 0 for gradient in plain)
    for expected, actual in zip(plain, checkpointed):
        torch.testing.assert_close(actual, expected)


def test_image_token_count_must_match_the_features(tiny, images):
    model, processor = tiny
    inputs = chat(processor, ["What is in this image?"], images[:1])
    input_ids = inputs["input_ids"]
    first_image_token = (input_ids[0] == model.config.image_token_id).nonzero()[0, 0]
    input_ids[0, first_image_token] = processor.tokenizer.convert_tokens_to_ids("▁")
    with pytest.raises(ValueError, match="Image features and image tokens do not match"):
        model(**inputs)


def test_pixel_values_of_the_wrong_size_are_refused(tiny, images):
    model, processor = tiny
    inputs = chat(processor, ["What is in this image?"], images[:1])
    with pytest.raises(ValueError, match=r"pixel_values must have shape \(images, channels, 32, 32\)"):
        model(input_ids=inputs["input_ids"], pixel_values=torch.zeros(1, 3, 40, 40))


def test_a_strategy_the_vision_tower_cannot_satisfy_is_refused(tiny, images):
    """CLIP has a CLS token: 'full' keeps it, and 65 tokens do not form the fuser's 8x8 grid."""
    model, processor = tiny
    inputs = chat(processor, ["What is in this image?"], images[:1])
    with pytest.raises(ValueError, match="vision_feature_select_strategy"):
        model.get_image_features(inputs["pixel_values"], vision_feature_select_strategy="full")


def test_full_strategy_fuses_every_token_of_a_tower_without_cls(images):
    """SigLIP has no CLS token: 'full' keeps all grid**2 tokens of every selected layer; the processor counts them."""
    vision_config = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=4,
        image_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE,
    )
    model, processor = build_tiny_model(
        vision_config=vision_config, vision_feature_select_strategy="full",
        fuser_key_value_layers=(1, 2, 3, 4), vision_feature_layer=-2,
    )
    perturb_fuser(model)
    inputs = chat(processor, ["What is in this image?", "Colour?"], images[:2])
    grid = TINY_IMAGE_SIZE // TINY_PATCH_SIZE
    with torch.no_grad():
        features = model.model.get_image_features(inputs["pixel_values"]).pooler_output
        hidden_states = model.model.vision_tower(inputs["pixel_values"], output_hidden_states=True).hidden_states
        maps = [hidden_states[index] for index in model.config.fuser_hidden_state_indices]
        expected = model.model.multi_modal_projector(model.model.fuser(maps[-1], maps[:-1]))
        logits = model(**inputs).logits
    assert all(feature.shape == (grid**2, model.config.text_config.hidden_size) for feature in features)
    torch.testing.assert_close(torch.stack(features), expected, rtol=0, atol=1e-6)
    assert (inputs["input_ids"] == model.config.image_token_id).sum() == 2 * grid**2
    assert logits.shape[:2] == inputs["input_ids"].shape and torch.isfinite(logits).all()
