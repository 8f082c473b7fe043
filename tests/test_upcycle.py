"""Upcycling a transformers Llava checkpoint: a fresh fuser (gates 0) leaves the base model's outputs exactly as they
were on the same inputs; which inputs a picture and a question become is the processor's choice (`processor=`)."""

import copy
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import assert_xavier_uniform, chat, perturb_fuser
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlamaTokenizer,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from modeling_mmfuser_llava import MMFuserLlavaConfig
from modeling_mmfuser_llava.cli import main
from modeling_mmfuser_llava.conversion import ConversionError
from modeling_mmfuser_llava.conversion.upcycle import fresh_fuser, upcycle_llava, upcycled_config, upcycled_processor
from modeling_mmfuser_llava.deformable_attention import sampling_offset_bias
from modeling_mmfuser_llava.processing import VICUNA_V1_CHAT_TEMPLATE, prepare_tokenizer
from modeling_mmfuser_llava.tiny import train_tiny_sentencepiece

IMAGE_MEAN = (0.5, 0.4, 0.3)  # not CLIP's: the upcycled processor must keep the base's settings
# llava-hf's Llava-1.5 template in short: no system prompt, "USER: <image>\n{text} ASSISTANT:".
LLAVA_HF_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() + ': ' }}"
    "{% for item in message['content'] if item['type'] == 'image' %}{{ '<image>\n' }}{% endfor %}"
    "{% for item in message['content'] if item['type'] == 'text' %}{{ item['text'] + ' ' }}{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def llava_hf_style_tokenizer(with_pad: bool = True) -> LlamaTokenizer:
    """A transformers 5 Llama tokenizer with `<image>` and `<pad>` added, as llava-hf ships: not prepared by us."""
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "tokenizer.model").write_bytes(train_tiny_sentencepiece())
        tokenizer = LlamaTokenizer.from_pretrained(folder)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    if with_pad:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    return tokenizer


def tiny_llava_config(**overrides) -> LlavaConfig:
    tokenizer = llava_hf_style_tokenizer()
    settings = dict(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=24,
                                       num_attention_heads=4, image_size=32, patch_size=4),
        text_config=LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=512,
                                pad_token_id=tokenizer.pad_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=64,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    return LlavaConfig(**{**settings, **overrides}), tokenizer


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory):
    """A seeded tiny Llava, saved by transformers (the older llava-hf key layout) with a llava-hf style LlavaProcessor
    (CLIP's resize and centre crop, no padding)."""
    folder = tmp_path_factory.mktemp("tiny-llava")
    config, tokenizer = tiny_llava_config()
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_mean=IMAGE_MEAN
    )
    LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=4,
                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                   chat_template=LLAVA_HF_CHAT_TEMPLATE).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def upcycled(base_folder, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("upcycled") / "mmfuser"
    upcycle_llava(base_folder, output_dir)
    return output_dir


def test_upcycled_model_equals_the_base_exactly_on_the_same_inputs(base_folder, upcycled, images):
    base = LlavaForConditionalGeneration.from_pretrained(base_folder).eval()
    model = AutoModelForImageTextToText.from_pretrained(upcycled, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(upcycled)
    inputs = chat(processor, ["what is in this image", "which colour is the circle", "how many"], images)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, base(**inputs).logits)
        assert torch.equal(
            model.generate(**inputs, max_new_tokens=5, do_sample=False),
            base.generate(**inputs, max_new_tokens=5, do_sample=False),
        )
        # ...because the gates are closed, not because the fuser is bypassed: opened gates change the outputs.
        trained = copy.deepcopy(model)
        perturb_fuser(trained)
        assert not torch.allclose(trained(**inputs).logits, base(**inputs).logits, atol=1e-3)


def test_original_and_base_processors_give_different_inputs_and_outputs(base_folder, upcycled, images):
    """The default folder pads a non-square picture to a square where the llava-hf processor crops its centre (and
    prompts and tokenizes its own way): same picture and question, other inputs, other logits. The model is not the
    cause: fed the base processor's inputs, the upcycled model gives the base's logits exactly."""
    base = LlavaForConditionalGeneration.from_pretrained(base_folder).eval()
    model = AutoModelForImageTextToText.from_pretrained(upcycled, trust_remote_code=True).eval()
    wide = images[0]
    assert wide.size == (48, 32)
    padded = chat(AutoProcessor.from_pretrained(upcycled), ["what is in this image"], [wide])
    cropped = chat(AutoProcessor.from_pretrained(base_folder), ["what is in this image"], [wide])
    assert padded["pixel_values"].shape == cropped["pixel_values"].shape == (1, 3, 32, 32)
    # Padding keeps the whole picture, in the middle rows of the square; cropping drops its left and right eighths.
    assert (padded["pixel_values"] - cropped["pixel_values"]).abs().max() > 0.5
    assert padded["input_ids"].shape != cropped["input_ids"].shape  # vicuna_v1's system prompt
    with torch.no_grad():
        ours, theirs = model(**padded).logits[0, -1], base(**cropped).logits[0, -1]
        assert (ours - theirs).abs().max() > 1e-3
        assert torch.equal(model(**cropped).logits, base(**cropped).logits)


def test_base_processor_is_kept_on_request(base_folder, tmp_path, images):
    """`processor="base"`: the folder's processor is the base's, so picture and question give the base's inputs and
    the upcycled model the base's outputs, exactly."""
    summary = upcycle_llava(base_folder, tmp_path / "kept", processor="base")
    assert summary.processor == "base" and "the base's own processor" in str(summary)
    base = LlavaForConditionalGeneration.from_pretrained(base_folder).eval()
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "kept", trust_remote_code=True).eval()
    kept, original = AutoProcessor.from_pretrained(tmp_path / "kept"), AutoProcessor.from_pretrained(base_folder)
    assert kept.chat_template == LLAVA_HF_CHAT_TEMPLATE and not getattr(kept.image_processor, "do_pad", False)
    for image in images:  # wide, square, tall
        inputs = chat(kept, ["what is in this image"], [image])
        expected = chat(original, ["what is in this image"], [image])
        assert inputs.keys() == expected.keys()
        assert all(torch.equal(inputs[key], expected[key]) for key in inputs)
        with torch.no_grad():
            assert torch.equal(model(**inputs).logits, base(**expected).logits)
    with pytest.raises(ConversionError, match="processor must be one of original, base"):
        upcycle_llava(base_folder, tmp_path / "unknown", processor="cropped")


def test_fresh_fuser_has_the_original_initialisation(upcycled):
    model = AutoModelForImageTextToText.from_pretrained(upcycled, trust_remote_code=True)
    fuser = model.model.fuser
    assert torch.equal(fuser.gamma1, torch.zeros(32)) and torch.equal(fuser.gamma2, torch.zeros(32))
    for attention, levels in ((fuser.cross_attn, 4), (fuser.self_attn, 1)):
        assert torch.equal(attention.sampling_offsets.weight, torch.zeros_like(attention.sampling_offsets.weight))
        assert torch.equal(attention.sampling_offsets.bias, sampling_offset_bias(16, levels, 4))
        assert not attention.attention_weights.weight.any() and not attention.attention_weights.bias.any()
        for projection in (attention.value_proj, attention.output_proj):
            assert_xavier_uniform(projection.weight)
            assert not projection.bias.any()
    for norm in (fuser.query_norm, fuser.feat_norm, fuser.norm1):
        assert torch.equal(norm.weight, torch.ones(32)) and not norm.bias.any()


def test_fresh_fuser_is_seeded(upcycled):
    model = AutoModelForImageTextToText.from_pretrained(upcycled, trust_remote_code=True)
    state = torch.random.get_rng_state()
    first, again, other = (fresh_fuser(model, seed, torch.float32).state_dict() for seed in (0, 0, 1))
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not torch.equal(first["cross_attn.value_proj.weight"], other["cross_attn.value_proj.weight"])


def test_upcycled_processor_keeps_the_base_settings_and_pads(base_folder, upcycled):
    base, processor = AutoProcessor.from_pretrained(base_folder), AutoProcessor.from_pretrained(upcycled)
    assert processor.chat_template == VICUNA_V1_CHAT_TEMPLATE
    assert processor.image_processor.do_pad is True
    assert tuple(processor.image_processor.image_mean) == IMAGE_MEAN
    assert processor.image_processor.size == base.image_processor.size
    # The base's tokenizer (transformers 5's Llama default, like llava-hf's) drops the original's "▁" after <image>;
    # the upcycled one tokenizes as the original does (test_processor compares prepare_tokenizer with it).
    text = "USER: <image>\nwhat is red ASSISTANT: red</s>USER: why ASSISTANT:"
    assert processor.tokenizer.tokenize(text) != base.tokenizer.tokenize(text)
    prepare_tokenizer(base.tokenizer)
    assert processor.tokenizer(text).input_ids == base.tokenizer(text).input_ids


def test_base_tokenizer_without_pad_token_is_refused(tmp_path):
    """Preparing it would add a `<pad>` token, for which the base's embeddings have no row."""
    config, _ = tiny_llava_config()
    tokenizer = llava_hf_style_tokenizer(with_pad=False)
    LlavaProcessor(image_processor=CLIPImageProcessorPil(), tokenizer=tokenizer, patch_size=4).save_pretrained(tmp_path)
    with pytest.raises(ConversionError, match="no pad token"):
        upcycled_processor(tmp_path, upcycled_config(config))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(vision_feature_layer=[-2, -1]), "vision_feature_layer"),
        (dict(vision_feature_select_strategy="full"), "vision_feature_select_strategy"),
        (dict(image_seq_length=65), "image_seq_length"),
    ],
)
def test_bases_the_fuser_cannot_extend_are_refused(overrides, message):
    config, _ = tiny_llava_config(**overrides)
    with pytest.raises(ConversionError, match=message):
        upcycled_config(config)


def test_upcycle_command_with_push_dry_run(base_folder, tmp_path, capsys):
    output_dir = tmp_path / "upcycled"
    assert main(["upcycle", "--base", str(base_folder), "--output", str(output_dir),
                 "--key-value-layers=-20,-10", "--push-to-hub", "someone/llava-mmfuser", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {output_dir}" in printed and "would upload to someone/llava-mmfuser" in printed
    assert MMFuserLlavaConfig.from_pretrained(output_dir).fuser_key_value_layers == (-20, -10)
    assert main(["upcycle", "--base", str(base_folder), "--output", str(output_dir)]) == 2  # OUT exists now
    assert "not empty" in capsys.readouterr().err


@pytest.mark.parametrize(("flag", "chat_template"), [([], VICUNA_V1_CHAT_TEMPLATE),
                                                    (["--processor", "original"], VICUNA_V1_CHAT_TEMPLATE),
                                                    (["--processor", "base"], LLAVA_HF_CHAT_TEMPLATE)])
def test_upcycle_command_processor_option(base_folder, tmp_path, capsys, flag, chat_template):
    assert main(["upcycle", "--base", str(base_folder), "--output", str(tmp_path / "out"), *flag]) == 0
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    assert processor.chat_template == chat_template
    assert bool(getattr(processor.image_processor, "do_pad", False)) is (chat_template == VICUNA_V1_CHAT_TEMPLATE)
    assert "processor: " in capsys.readouterr().out
