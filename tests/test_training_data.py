"""Training data: the original's "plain"/"v1" texts and labels, sample checks naming the id, truncation, batching."""

import pytest
import torch
from PIL import Image

from modeling_mmfuser_llava.processing import IMAGE_TOKEN
from modeling_mmfuser_llava.training.conversation import IGNORE_INDEX, InvalidSampleError, format_v1, parse_record
from modeling_mmfuser_llava.training.data import (
    LazySupervisedDataset,
    ModalityLengthGroupedSampler,
    OverlongSampleError,
    SupervisedCollator,
)
from training_support import write_dataset

IMAGE_SEQ_LENGTH = 64
PICTURE = Image.new("RGB", (40, 24), (200, 10, 10))  # every sample's a.png


def human(text):
    return {"from": "human", "value": text}


def gpt(text):
    return {"from": "gpt", "value": text}


TWO_ROUNDS = {
    "id": "two-rounds",
    "image": "a.png",
    "conversations": [
        human("what is in this image\n<image>"),  # the marker moves first, as in the original
        gpt("a red circle"),  # "▁" and "a" are separate tokens here: the "▁" belongs to the answer
        human("how many shapes are there"),
        gpt("two"),
    ],
}
TEXT_ONLY = {"id": "text-only", "conversations": [human("which colour is the sun"), gpt("yellow")]}
THREE_ROUNDS = {
    "id": "three-rounds",
    "conversations": [human("which colour is the sun"), gpt("yellow"), human("and the sky"), gpt("blue"),
                      human("how many suns"), gpt("one")],
}
CAPTION = {
    "id": "caption", "image": "a.png", "conversations": [human("<image>\ndescribe the picture"), gpt("a red square")]
}


@pytest.fixture
def processor(tiny_pristine):
    return tiny_pristine[1]


def dataset(tmp_path, processor, records, version="v1", model_max_length=512, **kwargs):
    path = write_dataset(tmp_path, records, {"a.png": PICTURE})
    return LazySupervisedDataset(
        path, processor, IMAGE_SEQ_LENGTH, model_max_length, version, image_folder=tmp_path / "images", **kwargs
    )


def original_v1_labels(text: str, input_ids: list[int], tokenizer) -> list[int]:
    """The original preprocess_v1's arithmetic, as an independent reference: per round (the text between "</s>"s), mask
    the instruction's token count minus 2 (BOS and the "▁" of the trailing space); `<image>` counts as its expanded
    tokens. A round after the first is counted as it is tokenized after "</s>", with no "▁" in front: the original
    tokenizes it alone and subtracts one token for that "▁" (its `not tokenizer.legacy` correction), which is right for
    Vicuna's vocabulary; counting after "</s>" (one token, standing in for BOS) is right for any vocabulary."""

    def count(piece: str, after_answer: bool) -> int:
        ids = tokenizer(f"</s>{piece}" if after_answer else piece).input_ids  # BOS first, then "</s>" if after_answer
        return len(ids) - (1 if after_answer else 0) + (IMAGE_SEQ_LENGTH - 1) * piece.count(IMAGE_TOKEN)

    labels = list(input_ids)
    labels[0] = IGNORE_INDEX
    position = 1
    for index, round_text in enumerate(text.split("</s>")):
        if not round_text:
            break
        instruction = round_text.split(" ASSISTANT: ")[0] + " ASSISTANT: "
        masked = count(instruction, index > 0) - 2
        labels[position : position + masked] = [IGNORE_INDEX] * masked
        position += count(round_text, index > 0)
    labels[position:] = [IGNORE_INDEX] * (len(labels) - position)
    return labels


def test_v1_matches_the_inference_processor_and_the_original_labels(tmp_path, processor):
    data = dataset(tmp_path, processor, [TWO_ROUNDS])
    item = data[0]
    conversation = parse_record(TWO_ROUNDS, 0, "v1")
    text = format_v1(conversation).text
    # The text is the processor's chat template with the answers filled in.
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is in this image"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a red circle"}]},
        {"role": "user", "content": [{"type": "text", "text": "how many shapes are there"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "two"}]},
    ]
    assert text == processor.apply_chat_template(messages)
    # The ids are those of the inference processor, images expanded to the model's image tokens.
    expected = processor(text=text, images=PICTURE, return_tensors="pt")
    assert item["input_ids"].tolist() == expected["input_ids"][0].tolist()
    assert torch.equal(item["pixel_values"], expected["pixel_values"])
    # Labels are the original's: only answers (from the space after "ASSISTANT:") and their "</s>".
    assert item["labels"].tolist() == original_v1_labels(text, item["input_ids"].tolist(), processor.tokenizer)
    supervised = processor.tokenizer.decode([t for t in item["labels"].tolist() if t != IGNORE_INDEX])
    assert supervised.replace(" ", "") == "aredcircle</s>two</s>"
    assert (item["labels"][item["input_ids"] == processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)] == -100).all()


def test_v1_text_only_rounds_match_the_original_labels(tmp_path, processor):
    item = dataset(tmp_path, processor, [THREE_ROUNDS])[0]
    text = format_v1(parse_record(THREE_ROUNDS, 0, "v1")).text
    assert item["labels"].tolist() == original_v1_labels(text, item["input_ids"].tolist(), processor.tokenizer)
    supervised = processor.tokenizer.decode([t for t in item["labels"].tolist() if t != IGNORE_INDEX])
    assert supervised == "yellow</s> blue</s> one</s>"


def test_plain_supervises_the_caption_and_newline_only(tmp_path, processor):
    item = dataset(tmp_path, processor, [CAPTION], version="plain")[0]
    ids, labels = item["input_ids"].tolist(), item["labels"].tolist()
    # BOS, the image tokens, then the caption: the human text ("describe the picture") is dropped, as in the original.
    assert ids[0] == processor.tokenizer.bos_token_id
    assert ids[1 : 1 + IMAGE_SEQ_LENGTH] == [processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)] * IMAGE_SEQ_LENGTH
    assert labels[: 1 + IMAGE_SEQ_LENGTH] == [IGNORE_INDEX] * (1 + IMAGE_SEQ_LENGTH)
    assert labels[1 + IMAGE_SEQ_LENGTH :] == ids[1 + IMAGE_SEQ_LENGTH :]
    assert processor.tokenizer.decode(ids[1 + IMAGE_SEQ_LENGTH :]) == "a red square\n"


def test_text_only_sample_has_no_image(tmp_path, processor):
    item = dataset(tmp_path, processor, [TEXT_ONLY])[0]
    assert "pixel_values" not in item
    assert processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) not in item["input_ids"].tolist()
    assert processor.tokenizer.decode([t for t in item["labels"].tolist() if t != -100]).strip() == "yellow</s>"


@pytest.mark.parametrize(
    ("record", "version", "message"),
    [
        ({"id": "no-turns", "image": "a.png"}, "v1", "'conversations' list"),
        ({"id": "bad-role", "conversations": [{"from": "system", "value": "x"}, gpt("y")]}, "v1", "'from'"),
        ({"id": "two-humans", "conversations": [human("a"), human("b")]}, "v1", "alternate"),
        ({"id": "no-answer", "conversations": [human("a"), gpt("b"), human("c")]}, "v1", "end with a gpt"),
        ({"id": "two-markers", "image": "a.png", "conversations": [human("<image><image>q"), gpt("a")]}, "v1",
         "exactly one <image>"),
        ({"id": "late-marker", "image": "a.png", "conversations": [human("q"), gpt("a"), human("<image>"), gpt("b")]},
         "v1", "first human turn"),
        ({"id": "marker-without-image", "conversations": [human("<image>\nq"), gpt("a")]}, "v1", "no 'image' field"),
        ({"id": "image-list", "image": ["a.png"], "conversations": [human("<image>"), gpt("a")]}, "v1", "one relative"),
        ({"id": "plain-text-only", "conversations": [human("q"), gpt("a")]}, "plain", "'plain' format"),
        (TWO_ROUNDS, "plain", "'plain' format"),
    ],
)
def test_malformed_samples_are_refused_by_id(tmp_path, processor, record, version, message):
    with pytest.raises(InvalidSampleError, match=message) as error:
        dataset(tmp_path, processor, [CAPTION if version == "plain" else TEXT_ONLY, record], version=version)
    assert repr(record["id"]) in str(error.value) and "entry 1" in str(error.value)


def test_leading_assistant_turn_is_dropped_as_in_the_original(tmp_path, processor):
    record = {"id": "lead", "conversations": [gpt("hello"), *TEXT_ONLY["conversations"]]}
    assert dataset(tmp_path, processor, [record])[0]["input_ids"].tolist() == dataset(
        tmp_path, processor, [TEXT_ONLY]
    )[0]["input_ids"].tolist()


def test_missing_image_names_the_sample(tmp_path, processor):
    data = dataset(tmp_path, processor, [{**TWO_ROUNDS, "id": "lost", "image": "missing.png"}])
    with pytest.raises(InvalidSampleError, match="'lost'.*missing.png does not exist"):
        data[0]


def test_truncation_never_cuts_image_tokens(tmp_path, processor):
    image_token = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    full = dataset(tmp_path, processor, [TWO_ROUNDS])[0]
    last_image_position = full["input_ids"].tolist().index(image_token) + IMAGE_SEQ_LENGTH - 1
    text_only_length = len(dataset(tmp_path, processor, [TEXT_ONLY])[0]["input_ids"])
    limit = last_image_position  # one token short of the whole image
    assert text_only_length <= limit
    with pytest.raises(OverlongSampleError, match="'two-rounds'.*cut into its 64 image tokens"):
        dataset(tmp_path, processor, [TWO_ROUNDS], model_max_length=limit)[0]
    data = dataset(tmp_path, processor, [TWO_ROUNDS, TEXT_ONLY], model_max_length=limit, skip_overlong_samples=True)
    assert data.skipped_sample_ids == ["two-rounds"] and len(data) == 1
    # Cutting text after the image is fine: ids and labels are cut together, the image tokens all kept.
    cut = dataset(tmp_path, processor, [TWO_ROUNDS], model_max_length=len(full["input_ids"]) - 5)[0]
    assert torch.equal(cut["input_ids"], full["input_ids"][:-5]) and torch.equal(cut["labels"], full["labels"][:-5])


def test_sample_left_without_answer_tokens_is_refused(tmp_path, processor):
    record = {"id": "long-question", "conversations": [human("what is in this image " * 40), gpt("x")]}
    with pytest.raises(OverlongSampleError, match="'long-question'.*no answer token"):
        dataset(tmp_path, processor, [record], model_max_length=100)[0]


def test_collator_pads_and_keeps_images_in_sample_order(tmp_path, processor):
    data = dataset(tmp_path, processor, [TEXT_ONLY, TWO_ROUNDS, CAPTION])
    items = [data[0], data[1], data[2]]
    batch = SupervisedCollator(pad_token_id=processor.tokenizer.pad_token_id)(items)
    lengths = [len(item["input_ids"]) for item in items]
    assert batch["input_ids"].shape == (3, max(lengths))
    for row, (item, length) in enumerate(zip(items, lengths)):
        assert torch.equal(batch["input_ids"][row, :length], item["input_ids"])
        assert (batch["input_ids"][row, length:] == processor.tokenizer.pad_token_id).all()
        assert (batch["labels"][row, length:] == IGNORE_INDEX).all()
        assert batch["attention_mask"][row].sum() == length
    assert torch.equal(batch["pixel_values"], torch.cat([items[1]["pixel_values"], items[2]["pixel_values"]]))
    assert "pixel_values" not in SupervisedCollator(0)([items[0]])


def test_modality_grouped_sampler_keeps_modalities_apart():
    lengths = [5, -3, 7, 2, -9, 4, -1, 6, 3, -2, 8, 1, -4]  # 8 with an image, 5 text-only
    sampler = ModalityLengthGroupedSampler(lengths, batch_size=2, world_size=2, seed=0)
    order = list(sampler)
    assert sorted(order) == list(range(len(lengths)))
    full_megabatches = [order[i : i + 4] for i in range(0, 12, 4)]  # 2 image + 1 text megabatch, then leftovers
    for megabatch in full_megabatches:
        assert len({lengths[i] > 0 for i in megabatch}) == 1
        assert [abs(lengths[i]) for i in megabatch] == sorted((abs(lengths[i]) for i in megabatch), reverse=True)
    assert list(sampler) == order  # same seed and epoch: same order, on every process and on resume
    sampler.set_epoch(1)
    assert list(sampler) != order
