"""Answer a question about an image with an MMFuser-LLaVA loaded the way users load it: through trust_remote_code."""

import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, BitsAndBytesConfig

EXAMPLE_IMAGE = resources.files(__package__) / "assets" / "example.png"
DEFAULT_PROMPT = "What is in this image?"


@dataclass
class DemoAnswer:
    answer: str
    seconds: float
    model_path: str


def load_for_inference(
    model_name_or_path: str | Path, device: str = "cpu", load_in_4bit: bool = False, dtype: torch.dtype | None = None
):
    """Model and processor from a Hub id or a local folder, with `trust_remote_code=True`."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for, but torch sees no CUDA GPU on this machine")
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4") if load_in_4bit else None
    model = AutoModelForImageTextToText.from_pretrained(
        model_name_or_path,
        trust_remote_code=True,
        dtype=dtype or (torch.float16 if device.startswith("cuda") else torch.float32),
        quantization_config=quantization,
        device_map=device,
    ).eval()
    processor = AutoProcessor.from_pretrained(model_name_or_path, trust_remote_code=True)
    return model, processor


def answer(model, processor, image: Image.Image, prompt: str, max_new_tokens: int = 32) -> str:
    """Greedy answer to `prompt` about `image`, in the vicuna_v1 conversation format."""
    return answer_batch(model, processor, [image], [prompt], max_new_tokens)[0]


def answer_batch(
    model, processor, images: list[Image.Image], prompts: list[str], max_new_tokens: int = 32
) -> list[str]:
    """Greedy answers to one prompt per image, generated as one left-padded batch."""
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}],
            add_generation_prompt=True,
        )
        for prompt in prompts
    ]
    inputs = processor(images=images, text=texts, return_tensors="pt", padding=True, padding_side="left")
    inputs = inputs.to(model.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    return [text.strip() for text in processor.batch_decode(new_tokens, skip_special_tokens=True)]


def run_demo(
    model: str | Path | None = None,
    image: str | Path | None = None,
    prompt: str = DEFAULT_PROMPT,
    save_dir: str | Path | None = None,
    device: str = "cpu",
    load_in_4bit: bool = False,
    max_new_tokens: int = 32,
) -> DemoAnswer:
    """Load `model` (or write the tiny model as a Hub folder and reload it) and answer `prompt` about `image`."""
    image_path = Path(image) if image is not None else EXAMPLE_IMAGE
    if image is not None and not image_path.is_file():
        raise FileNotFoundError(f"no image at {image_path}")
    with Image.open(image_path) as opened:
        picture = opened.convert("RGB")
    with tempfile.TemporaryDirectory() as scratch:
        if model is None:
            model = Path(save_dir) if save_dir is not None else Path(scratch) / "mmfuser-llava-tiny"
            write_tiny_hub_folder(model)
        start = time.perf_counter()
        loaded, processor = load_for_inference(model, device=device, load_in_4bit=load_in_4bit)
        text = answer(loaded, processor, picture, prompt, max_new_tokens)
        return DemoAnswer(text, time.perf_counter() - start, str(model))


def write_tiny_hub_folder(output_dir: str | Path, seed: int = 0) -> Path:
    """The seeded tiny model as a Hub-layout folder (config, code, weights, processor)."""
    from .hub_folder import save_hub_folder
    from .tiny import build_tiny_model

    tiny, processor = build_tiny_model(seed=seed)
    return save_hub_folder(tiny, processor, output_dir, overwrite=True)


__all__ = ["DemoAnswer", "answer", "answer_batch", "load_for_inference", "run_demo", "write_tiny_hub_folder"]
