"""LLaVA-format samples -> token ids and labels, in the original's "plain" (stage 1) and "v1" (stage 2) formats.

Text is built exactly as the original builds it; labels keep only what the original supervises (the caption in
"plain"; in "v1" every assistant answer from the space after "ASSISTANT:" through its closing "</s>"). Instead of the
original's token-length arithmetic, labels come from the tokenizer's character offsets, so they stay right for any
tokenizer; the ids are those of the inference processor (`<image>` expanded to the model's image tokens).
"""

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from ..processing import IMAGE_TOKEN, VICUNA_V1_SYSTEM_PROMPT

IGNORE_INDEX = -100
HUMAN, GPT = "human", "gpt"
VERSIONS = ("plain", "v1")
V1_USER, V1_ASSISTANT, V1_END_OF_ANSWER = "USER:", "ASSISTANT:", "</s>"


class InvalidSampleError(ValueError):
    """A training sample that cannot be used; the message names its id."""


@dataclass(frozen=True)
class Conversation:
    sample_id: str
    turns: tuple[tuple[str, str], ...]  # (speaker, text), alternating human/gpt, starting with human
    image: str | None  # path relative to the image folder, or None for a text-only sample


@dataclass(frozen=True)
class FormattedText:
    text: str
    supervised_spans: tuple[tuple[int, int], ...]  # character ranges whose tokens are trained on


def describe(record: object, index: int) -> str:
    """How errors name a sample: its id where it has one, and always its position in the file."""
    sample_id = record.get("id") if isinstance(record, dict) else None
    return f"sample {sample_id!r} (entry {index})" if sample_id is not None else f"sample at entry {index}"


def parse_record(record: object, index: int, version: str) -> Conversation:
    """Check one JSON entry and return it as a `Conversation`; `InvalidSampleError` names the sample otherwise.

    As in the original, a conversation that opens with an assistant turn loses that turn.
    """
    name = describe(record, index)
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
        raise InvalidSampleError(f"{name}: expected an object with a 'conversations' list")
    image = record.get("image")
    if image is not None and not isinstance(image, str):
        raise InvalidSampleError(f"{name}: 'image' must be one relative path (a string), got {image!r}")
    turns = []
    for turn in record["conversations"]:
        if not (isinstance(turn, dict) and turn.get("from") in (HUMAN, GPT) and isinstance(turn.get("value"), str)):
            raise InvalidSampleError(
                f"{name}: every turn must be {{'from': 'human' | 'gpt', 'value': str}}, got {turn!r}"
            )
        turns.append((turn["from"], turn["value"]))
    if turns and turns[0][0] != HUMAN:
        turns = turns[1:]
    expected = [HUMAN if position % 2 == 0 else GPT for position in range(len(turns))]
    if not turns or [speaker for speaker, _ in turns] != expected or turns[-1][0] != GPT:
        raise InvalidSampleError(
            f"{name}: the conversation must alternate human and gpt turns and end with a gpt answer, got speakers "
            f"{[turn.get('from') for turn in record['conversations']]}"
        )
    markers = [text.count(IMAGE_TOKEN) for _, text in turns]
    if image is not None and (sum(markers) != 1 or markers[0] != 1):
        raise InvalidSampleError(
            f"{name}: a sample with an image needs exactly one {IMAGE_TOKEN} marker, in its first human turn; "
            f"found {sum(markers)} (per turn: {markers})"
        )
    if image is None and sum(markers):
        raise InvalidSampleError(f"{name}: {sum(markers)} {IMAGE_TOKEN} marker(s) but no 'image' field")
    if version == "plain" and (image is None or len(turns) != 2):
        raise InvalidSampleError(
            f"{name}: the 'plain' format takes one image and one human/gpt pair (a caption), got "
            f"{len(turns)} turns and {'an' if image else 'no'} image"
        )
    return Conversation(str(record.get("id", index)), tuple(turns), image)


def image_first(text: str) -> str:
    """The original puts a turn's image marker first, on its own line."""
    if IMAGE_TOKEN not in text:
        return text
    return f"{IMAGE_TOKEN}\n{text.replace(IMAGE_TOKEN, '').strip()}"


def format_plain(conversation: Conversation) -> FormattedText:
    """`<image>{caption}\\n`: the human text is dropped; the caption and the newline are supervised."""
    text = f"{IMAGE_TOKEN}{conversation.turns[1][1]}\n"
    return FormattedText(text, ((len(IMAGE_TOKEN), len(text)),))


def format_v1(conversation: Conversation) -> FormattedText:
    """vicuna_v1: `{system} USER: {q} ASSISTANT: {a}</s>USER: ...` (the processor's chat template, with answers)."""
    text = f"{VICUNA_V1_SYSTEM_PROMPT} "
    spans = []
    for speaker, value in conversation.turns:
        if speaker == HUMAN:
            text += f"{V1_USER} {image_first(value)} "
        else:
            text += V1_ASSISTANT
            start = len(text)
            text += f" {value}{V1_END_OF_ANSWER}"
            spans.append((start, len(text)))
    return FormattedText(text, tuple(spans))


FORMATTERS = {"plain": format_plain, "v1": format_v1}


def encode(
    formatted: FormattedText, tokenizer: PreTrainedTokenizerBase, image_token_id: int, image_seq_length: int
) -> tuple[list[int], list[int]]:
    """Token ids (BOS first, `<image>` repeated `image_seq_length` times) and labels (IGNORE_INDEX off the spans)."""
    encoding = tokenizer(formatted.text, return_offsets_mapping=True)
    input_ids: list[int] = []
    labels: list[int] = []
    for token_id, (start, end) in zip(encoding["input_ids"], encoding["offset_mapping"]):
        if token_id == image_token_id:
            input_ids += [token_id] * image_seq_length
            labels += [IGNORE_INDEX] * image_seq_length
            continue
        supervised = any(start < span_end and end > span_start for span_start, span_end in formatted.supervised_spans)
        input_ids.append(token_id)
        labels.append(token_id if supervised else IGNORE_INDEX)
    return input_ids, labels


__all__ = [
    "Conversation",
    "FORMATTERS",
    "FormattedText",
    "IGNORE_INDEX",
    "InvalidSampleError",
    "VERSIONS",
    "encode",
    "format_plain",
    "format_v1",
    "parse_record",
]
