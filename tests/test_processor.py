"""The processor reproduces LLaVA-1.5's preprocessing: the vicuna_v1 prompt, the original's token ids, its pixels."""

import re

import numpy as np
import pytest
import sentencepiece
import torch
from PIL import Image
from sentencepiece import sentencepiece_model_pb2
from transformers import AutoProcessor, CLIPImageProcessorPil

from modeling_mmfuser_llava.processing import VICUNA_V1_SYSTEM_PROMPT
from modeling_mmfuser_llava.tiny import TINY_IMAGE_SIZE, build_tiny_tokenizer, train_tiny_sentencepiece
from modeling_mmfuser_llava.processing import build_processor

ORIGINAL_PLACEHOLDER = -200  # the original's IMAGE_TOKEN_INDEX


class OriginalLlamaTokenizer:
    """The original's slow `LlamaTokenizer` with `legacy=False` (Vicuna-v1.5's setting) on a sentencepiece model: the
    special tokens in the text become their ids; the text before the first one gets sentencepiece's dummy prefix "▁",
    the text after one gets none (the slow tokenizer encodes it with the dummy prefix switched off)."""

    def __init__(self, model_bytes: bytes):
        self.model = sentencepiece.SentencePieceProcessor(model_proto=model_bytes)
        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(model_bytes)
        proto.normalizer_spec.add_dummy_prefix = False
        self.without_prefix = sentencepiece.SentencePieceProcessor(model_proto=proto.SerializeToString())
        special_ids = (self.model.unk_id(), self.model.bos_id(), self.model.eos_id())
        self.special = {self.model.id_to_piece(token): token for token in special_ids}
        self.special_pattern = re.compile("(" + "|".join(map(re.escape, self.special)) + ")")

    def encode(self, text: str) -> list[int]:
        ids = []
        for index, part in enumerate(self.special_pattern.split(text)):  # text, special, text, ...
            if index % 2:
                ids.append(self.special[part])
            else:
                ids += (self.model if index == 0 else self.without_prefix).encode(part)
        return ids


def original_tokenizer_image_token(prompt: str, tokenizer: OriginalLlamaTokenizer) -> list[int]:
    """The original `tokenizer_image_token`: tokenize the text between `<image>` markers chunk by chunk (each chunk
    as the slow Llama tokenizer does: BOS, then its ids) and put one placeholder between."""
    chunks = [[tokenizer.model.bos_id(), *tokenizer.encode(chunk)] for chunk in prompt.split("<image>")]
    ids = chunks[0]
    for chunk in chunks[1:]:
        ids += [ORIGINAL_PLACEHOLDER, *chunk[1:]]
    return ids


def collapse_image_tokens(ids: list[int], image_token_id: int) -> list[int]:
    """Our expanded `<image>` runs back to one original placeholder each."""
    collapsed = []
    for token in ids:
        if token == image_token_id:
            if collapsed and collapsed[-1] == ORIGINAL_PLACEHOLDER:
                continue
            token = ORIGINAL_PLACEHOLDER
        collapsed.append(token)
    return collapsed


@pytest.fixture(scope="module")
def sentencepiece_and_processor():
    model_bytes = train_tiny_sentencepiece()
    processor = build_processor(build_tiny_tokenizer(model_bytes), TINY_IMAGE_SIZE, 4)
    return OriginalLlamaTokenizer(model_bytes), processor


def single_turn(question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


MULTI_TURN = single_turn("What is shown?") + [
    {"role": "assistant", "content": [{"type": "text", "text": "A red circle."}]},
    {"role": "user", "content": "And its colour?"},
]


def test_chat_template_gives_the_original_vicuna_v1_prompt(sentencepiece_and_processor):
    processor = sentencepiece_and_processor[1]
    prompt = processor.apply_chat_template(single_turn("What is shown?"), add_generation_prompt=True)
    assert prompt == f"{VICUNA_V1_SYSTEM_PROMPT} USER: <image>\nWhat is shown? ASSISTANT:"
    prompt = processor.apply_chat_template(MULTI_TURN, add_generation_prompt=True)
    expected = "USER: <image>\nWhat is shown? ASSISTANT: A red circle.</s>USER: And its colour? ASSISTANT:"
    assert prompt == f"{VICUNA_V1_SYSTEM_PROMPT} {expected}"
    custom = [{"role": "system", "content": "Be brief."}] + single_turn("Hi")
    assert processor.apply_chat_template(custom, add_generation_prompt=True) == "Be brief. USER: <image>\nHi ASSISTANT:"


@pytest.mark.parametrize(
    "question", ["What is in this image?", "How many shapes? Answer with 3 words.", "  two leading spaces", "é ü ø 42"]
)
def test_token_ids_equal_the_originals(sentencepiece_and_processor, question):
    original, processor = sentencepiece_and_processor
    prompt = processor.apply_chat_template(single_turn(question), add_generation_prompt=True)
    image = Image.new("RGB", (40, 30), "white")
    ours = processor(images=image, text=prompt)["input_ids"][0]
    image_token_id = processor.image_token_id
    assert ours.count(image_token_id) == (TINY_IMAGE_SIZE // 4) ** 2
    expected = original_tokenizer_image_token(prompt, original)
    assert collapse_image_tokens(ours, image_token_id) == expected
    # The tokens around the image, which transformers 5's default (legacy=False) tokenization gets wrong:
    at = expected.index(ORIGINAL_PLACEHOLDER)
    pieces = [original.model.id_to_piece(token) for token in expected[at - 1 : at + 3] if token != ORIGINAL_PLACEHOLDER]
    assert pieces == ["▁", "▁", "<0x0A>"]


def test_multi_turn_token_ids_equal_the_originals(sentencepiece_and_processor):
    original, processor = sentencepiece_and_processor
    prompt = processor.apply_chat_template(MULTI_TURN, add_generation_prompt=True)
    ours = processor(images=Image.new("RGB", (40, 30), "white"), text=prompt)["input_ids"][0]
    expected = original_tokenizer_image_token(prompt, original)
    assert expected.count(original.model.eos_id()) == 1  # the assistant turn's "</s>" is the EOS id, not its letters
    assert collapse_image_tokens(ours, processor.image_token_id) == expected
    # The text after "</s>" has no "▁", unlike the text after <image>:
    after_answer = expected[expected.index(original.model.eos_id()) + 1]
    assert not original.model.id_to_piece(after_answer).startswith("▁")


@pytest.mark.parametrize("text", ["</s>USER: hi", "<s> two", " leading space", "<image>b</s>c", "x <image>"])
def test_edge_texts_token_ids_equal_the_originals(sentencepiece_and_processor, text):
    """Chunks that start with a special token or a space, and empty chunks around an image, as the original."""
    original, processor = sentencepiece_and_processor
    ours = processor.tokenizer(text)["input_ids"]
    assert collapse_image_tokens(ours, processor.image_token_id) == original_tokenizer_image_token(text, original)


@pytest.mark.parametrize("answer", ["A red circle.", "Two  shapes:\n3 é, left"])
def test_generated_answers_decode_to_their_text(sentencepiece_and_processor, answer):
    """Answer ids as the model learns to generate them (after "ASSISTANT:", closed by "</s>", then padded in a batch)
    decode to the answer with no space gained or lost, as sentencepiece decodes them."""
    original, processor = sentencepiece_and_processor
    tokenizer = processor.tokenizer
    rows = []
    for conversation in (single_turn("What is shown?"), MULTI_TURN):
        prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
        prompt_ids = tokenizer(prompt)["input_ids"]
        ids = tokenizer(f"{prompt} {answer}</s>")["input_ids"]
        assert ids[: len(prompt_ids)] == prompt_ids
        rows.append(ids[len(prompt_ids) :])
    assert rows[0] == rows[1] and rows[0][-1] == tokenizer.eos_token_id
    batch = [rows[0] + [tokenizer.pad_token_id] * 2, rows[1]]  # generate pads a row that finished early
    assert tokenizer.batch_decode(batch, skip_special_tokens=True) == [answer, answer]
    assert original.model.decode(rows[0]) == answer


def test_token_ids_survive_save_reload_and_resave(sentencepiece_and_processor, tmp_path):
    """Two save/load rounds keep the ids: the normalizer and the special tokens' `normalized` flags are saved."""
    original, processor = sentencepiece_and_processor
    processor.save_pretrained(tmp_path / "first")
    AutoProcessor.from_pretrained(tmp_path / "first").save_pretrained(tmp_path / "second")
    reloaded = AutoProcessor.from_pretrained(tmp_path / "second")
    prompt = reloaded.apply_chat_template(MULTI_TURN, add_generation_prompt=True)
    ids = reloaded(images=Image.new("RGB", (8, 8)), text=prompt)["input_ids"][0]
    expected = original_tokenizer_image_token(prompt, original)
    assert collapse_image_tokens(ids, reloaded.image_token_id) == expected


def original_expand2square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """The original's pad-to-square: paste centred on a square canvas of the background colour."""
    width, height = image.size
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), background)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


@pytest.mark.parametrize("size", [(48, 32), (20, 44), (32, 32), (333, 100)])
def test_pixels_equal_the_originals(sentencepiece_and_processor, size):
    processor = sentencepiece_and_processor[1]
    generator = np.random.default_rng(sum(size))
    image = Image.fromarray(generator.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    clip = CLIPImageProcessorPil(
        size={"shortest_edge": TINY_IMAGE_SIZE}, crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
    )
    background = tuple(int(mean * 255) for mean in clip.image_mean)
    assert background == (122, 116, 104)
    expected = clip(original_expand2square(image, background), return_tensors="pt")["pixel_values"]
    ours = processor.image_processor(image, return_tensors="pt")["pixel_values"]
    assert ours.shape == (1, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
