"""Answer a question about an image with an MMFuser-LLaVA loaded the way users load it: through trust_remote_code.

With no model given, the demo uses the tiny MMFuser-LLaVA bundled in the package: the best MMFuser run of
`mmfuser-llava experiment`, trained on CPU to answer questions about small marks beside a large shape, and asks it a
question about one of the bundled example pictures, whose right answer it knows.
"""

import json
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, BitsAndBytesConfig

from .grounding import BoxFrame, check_picture_path, save_boxes

ASSETS = Path(str(resources.files(__package__) / "assets"))
EXAMPLE_IMAGE = ASSETS / "example.png"
DEFAULT_PROMPT = "What is in this image?"
TRAINED_TINY_MODEL = ASSETS / "trained-tiny"
TRAINED_TINY_EXAMPLES = ASSETS / "trained-tiny-examples"


@dataclass
class DemoAnswer:
    image_path: str
    prompt: str
    answer: str
    seconds: float
    model_path: str
    expected: str | None = None  # the right answer, when the question is one of the bundled examples'
    boxes_path: str | None = None  # the picture with the answer's boxes drawn, when asked for


def bundled_examples() -> list[dict]:
    """The example pictures of the bundled model: `{"image": path, "questions": [{"question", "answer"}, ...]}`."""
    examples = json.loads((TRAINED_TINY_EXAMPLES / "examples.json").read_text())
    return [{**example, "image": TRAINED_TINY_EXAMPLES / example["image"]} for example in examples]


def load_for_inference(
    model_name_or_path: str | Path,
    device: str = "cpu",
    load_in_4bit: bool = False,
    dtype: torch.dtype | str | None = None,
    load_in_8bit: bool = False,
    attn_implementation: str | None = None,
):
    """Model and processor from a Hub id or a local folder, with `trust_remote_code=True`.

    `dtype` defaults to float16 on CUDA and float32 elsewhere; 4-bit is NF4, and either quantization leaves the
    vision tower, the fuser and the projector unquantized (the model's default skip list)."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for, but torch sees no CUDA GPU on this machine")
    if load_in_4bit and load_in_8bit:
        raise ValueError("load_in_4bit and load_in_8bit exclude each other: ask for one")
    quantization = None
    if load_in_4bit:
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")
    elif load_in_8bit:
        quantization = BitsAndBytesConfig(load_in_8bit=True)
    model = AutoModelForImageTextToText.from_pretrained(
        model_name_or_path,
        trust_remote_code=True,
        dtype=dtype or (torch.float16 if device.startswith("cuda") else torch.float32),
        quantization_config=quantization,
        attn_implementation=attn_implementation,
        device_map=device,
    ).eval()
    processor = AutoProcessor.from_pretrained(model_name_or_path, trust_remote_code=True)
    return model, processor


def user_message(text: str, with_image: bool = True) -> dict:
    """A user turn in transformers' chat format; the picture goes with the first turn of a conversation only."""
    picture = [{"type": "image"}] if with_image else []
    return {"role": "user", "content": [*picture, {"type": "text", "text": text}]}


def conversation_inputs(model, processor, images: list[Image.Image], conversations: list[list[dict]]):
    """Model inputs for chat conversations (`images`: the pictures of their image items, in order), through the
    processor's chat template (vicuna_v1), left-padded, on the model's device and in its dtype, ready for `generate`."""
    texts = [processor.apply_chat_template(messages, add_generation_prompt=True) for messages in conversations]
    inputs = processor(images=images or None, text=texts, return_tensors="pt", padding=True, padding_side="left")
    inputs = inputs.to(model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    return inputs


def answer(model, processor, image: Image.Image, prompt: str, max_new_tokens: int = 32) -> str:
    """Greedy answer to `prompt` about `image`, in the vicuna_v1 conversation format."""
    return answer_batch(model, processor, [image], [prompt], max_new_tokens)[0]


def answer_batch(
    model, processor, images: list[Image.Image], prompts: list[str], max_new_tokens: int = 32
) -> list[str]:
    """Greedy answers to one prompt per image, generated as one left-padded batch."""
    conversations = [[user_message(prompt)] for prompt in prompts]
    return answer_conversations(model, processor, conversations, images, max_new_tokens=max_new_tokens)


def answer_conversations(
    model, processor, conversations: list[list[dict]], images: list[Image.Image], **generation_kwargs
) -> list[str]:
    """The assistant's next turn in each chat conversation, generated as one left-padded batch.

    `images` holds the pictures of every conversation's image items, in order. Greedy unless `generation_kwargs`
    (passed to `generate`, e.g. `max_new_tokens`) say otherwise.
    """
    inputs = conversation_inputs(model, processor, images, conversations)
    with torch.inference_mode():
        output = model.generate(**inputs, **{"do_sample": False, **generation_kwargs})
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    return [text.strip() for text in processor.batch_decode(new_tokens, skip_special_tokens=True)]


def run_demo(
    model: str | Path | None = None,
    image: str | Path | None = None,
    prompt: str | None = None,
    save_dir: str | Path | None = None,
    device: str = "cpu",
    load_in_4bit: bool = False,
    max_new_tokens: int = 32,
    overwrite: bool = False,
    save_boxes_to: str | Path | None = None,
) -> DemoAnswer:
    """Load `model` (by default the bundled trained tiny model, written as a Hub folder first, into `save_dir` if
    given) through trust_remote_code and answer `prompt` about `image`.

    Defaults: the first bundled example picture and its first question; a bundled picture asked one of its
    questions gets the right answer in `expected`. A `save_dir` holding anything but a previous demo's model folder
    is refused unless `overwrite` is set. `save_boxes_to`: a picture file to write the picture into with the boxes
    the answer contains drawn on it, mapped from the model's frame (`grounding.BoxFrame.of` its processor).
    """
    if save_boxes_to is not None:
        check_picture_path(save_boxes_to)
    examples = bundled_examples()
    if image is not None and not Path(image).is_file():
        raise FileNotFoundError(f"no image at {image}")
    if model is None and save_dir is not None and not overwrite:
        check_replaceable_demo_folder(Path(save_dir))
    image_path = Path(image) if image is not None else examples[0]["image"]
    if prompt is None:
        prompt = examples[0]["questions"][0]["question"] if image is None else DEFAULT_PROMPT
    known = {(example["image"].resolve(), q["question"]): q["answer"]
             for example in examples for q in example["questions"]}
    with Image.open(image_path) as opened:
        picture = opened.convert("RGB")
    with tempfile.TemporaryDirectory() as scratch:
        if model is None:
            model = Path(save_dir) if save_dir is not None else Path(scratch) / "mmfuser-llava-tiny-trained"
            write_trained_tiny_hub_folder(model)
        start = time.perf_counter()
        loaded, processor = load_for_inference(model, device=device, load_in_4bit=load_in_4bit)
        text = answer(loaded, processor, picture, prompt, max_new_tokens)
        seconds = time.perf_counter() - start
        boxes = None if save_boxes_to is None else str(save_boxes(picture, text, BoxFrame.of(processor), save_boxes_to))
        return DemoAnswer(str(image_path), prompt, text, seconds, str(model), known.get((image_path.resolve(), prompt)),
                          boxes)


def model_config(folder: Path) -> dict | None:
    """`folder`'s model config as transformers reads it (defaults filled in), without the version that wrote it; None
    if it has none that reads."""
    from .configuration_mmfuser_llava import MMFuserLlavaConfig

    if not (folder / "config.json").is_file():
        return None
    try:
        config = MMFuserLlavaConfig.from_pretrained(folder).to_dict()
    except (OSError, ValueError, TypeError):
        return None
    return {key: value for key, value in config.items() if key != "transformers_version"}


def is_demo_folder(folder: Path) -> bool:
    """Whether `folder` holds only what the demo writes: the bundled tiny model's config, its files, model code."""
    names = {path.name for path in TRAINED_TINY_MODEL.iterdir()}
    return all(path.is_file() and (path.name in names or path.suffix == ".py") for path in folder.iterdir()) and (
        model_config(folder) == model_config(TRAINED_TINY_MODEL)
    )


def check_replaceable_demo_folder(save_dir: Path) -> None:
    """Refuse to write the demo's model folder over a file, or over a folder holding anything but a previous one."""
    if save_dir.exists() and not (save_dir.is_dir() and (not any(save_dir.iterdir()) or is_demo_folder(save_dir))):
        raise FileExistsError(f"{save_dir} exists and is not a model folder written by the demo: "
                              "pass overwrite=True (--overwrite) to replace it")


def write_trained_tiny_hub_folder(output_dir: str | Path) -> Path:
    """The bundled trained tiny model as a Hub-layout folder, with this package's model code beside the weights.

    `output_dir` is replaced if it exists: callers check first (`check_replaceable_demo_folder`).
    """
    from .hub_folder import save_hub_folder
    from .modeling_mmfuser_llava import MMFuserLlavaForConditionalGeneration

    model = MMFuserLlavaForConditionalGeneration.from_pretrained(TRAINED_TINY_MODEL)
    return save_hub_folder(model, AutoProcessor.from_pretrained(TRAINED_TINY_MODEL), output_dir, overwrite=True)


def write_tiny_hub_folder(output_dir: str | Path, seed: int = 0) -> Path:
    """The seeded tiny model as a Hub-layout folder (config, code, weights, processor)."""
    from .hub_folder import save_hub_folder
    from .tiny import build_tiny_model

    tiny, processor = build_tiny_model(seed=seed)
    return save_hub_folder(tiny, processor, output_dir, overwrite=True)


__all__ = [
    "DemoAnswer",
    "answer",
    "answer_batch",
    "answer_conversations",
    "bundled_examples",
    "conversation_inputs",
    "load_for_inference",
    "run_demo",
    "user_message",
    "write_tiny_hub_folder",
    "write_trained_tiny_hub_folder",
]
