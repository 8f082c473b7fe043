"""A seeded synthetic dataset in the LLaVA JSON format: shapes drawn with PIL, questions the picture alone answers.

Small enough to train on a CPU in seconds, and learnable: a model that reads the image can drive its loss down (the
shape, colour and count are in the picture only). Two layouts, matching the two stages:
- "captions": one image and one caption per sample (LLaVA-Pretrain style, for `--version plain`);
- "instructions": one or two question/answer rounds per image, plus some text-only samples (mix665k style, `v1`);
- "grounding": LLaVA-1.5's referring question about one of two shapes on a clearly non-square picture, answered with
  its box in the model's frame (the picture padded to a square), so a model that ignores the padding is wrong.
"""

import json
import random
from pathlib import Path
from typing import Literal

from PIL import Image, ImageDraw

from ..grounding import Box, format_box, to_padded_square_box
from ..hub_folder import staged_output

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 70, 220), "yellow": (235, 210, 40)}
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0)}
COUNT_WORDS = ("one", "two", "three")
TEXT_ONLY = (
    ("how many sides has a square", "four"),
    ("how many sides has a triangle", "three"),
    ("which colour is the sun", "yellow"),
)
DATA_FILE = "data.json"
IMAGE_DIR = "images"
KINDS = ("captions", "instructions", "grounding")
GROUNDING_QUESTION = "Please provide the bounding box coordinate of the region this sentence describes: "


def draw_scene(rng: random.Random, shape: str, colour: str, count: int, background: str) -> Image.Image:
    """`count` shapes of one kind and colour on a plain background, in a picture of random (non-square) size."""
    width, height = rng.randint(28, 56), rng.randint(28, 56)
    image = Image.new("RGB", (width, height), BACKGROUNDS[background])
    draw = ImageDraw.Draw(image)
    cell = width // count
    largest = min(cell, height) - 2  # shapes of a picture never overlap and stay inside it
    for position in range(count):
        size = rng.randint(largest // 2, largest)
        left = position * cell + rng.randint(0, max(0, cell - size))
        top = rng.randint(0, height - size)
        draw_shape(draw, shape, colour, (left, top, left + size, top + size))
    return image


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, colour: str, box: tuple[int, int, int, int]) -> None:
    """One shape filling the pixel box `(left, top, right, bottom)`."""
    left, top, right, bottom = box
    if shape == "circle":
        draw.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        draw.rectangle(box, fill=COLOURS[colour])
    else:
        draw.polygon([((left + right) / 2, top), (left, bottom), (right, bottom)], fill=COLOURS[colour])


GROUNDING_SHAPES = 2  # per picture, one in each half of its long side


def grounding_scene(rng: random.Random) -> tuple[Image.Image, list[tuple[str, str, Box]]]:
    """Two shapes of different forms and colours, one in each half of the long side of a picture 1.5 to 2.7 times
    as wide as tall (or tall as wide); returns the picture and each shape's colour, shape and box normalised to the
    picture. The shapes fill two thirds of their half or more, large enough to be told apart from the 8x8 patches of
    the toy experiment's tower (which sees the padded square at 32x32 pixels)."""
    long_side, short_side = rng.randint(48, 64), rng.randint(24, 32)
    wide = rng.random() < 0.5
    width, height = (long_side, short_side) if wide else (short_side, long_side)
    image = Image.new("RGB", (width, height), BACKGROUNDS[rng.choice(list(BACKGROUNDS))])
    draw = ImageDraw.Draw(image)
    objects = list(zip(rng.sample(list(COLOURS), GROUNDING_SHAPES), rng.sample(SHAPES, GROUNDING_SHAPES)))
    cell = long_side // GROUNDING_SHAPES
    largest = min(cell, short_side) - 2
    regions = []
    for position, (colour, shape) in enumerate(objects):
        size = rng.randint(largest * 2 // 3, largest)
        along = position * cell + rng.randint(0, cell - size - 1)
        across = rng.randint(0, short_side - size - 1)
        left, top = (along, across) if wide else (across, along)
        draw_shape(draw, shape, colour, (left, top, left + size, top + size))
        # ImageDraw fills the box's last row and column too: the shape covers size + 1 pixels.
        regions.append((colour, shape, (left / width, top / height, (left + size + 1) / width,
                                        (top + size + 1) / height)))
    return image, regions


def grounding_conversation(image_size: tuple[int, int], *regions: tuple[str, str, Box]) -> list[dict[str, str]]:
    """LLaVA-1.5's referring question about each region in turn, answered with its box on the padded square."""
    return image_turns(*[(f"{GROUNDING_QUESTION}the {colour} {shape}",
                          format_box(to_padded_square_box(box, *image_size))) for colour, shape, box in regions])


def describe_scene(shape: str, colour: str, count: int) -> str:
    return f"{COUNT_WORDS[count - 1]} {colour} {shape}{'s' if count > 1 else ''}"


def make_synthetic_dataset(
    output_dir: str | Path,
    num_samples: int = 64,
    seed: int = 0,
    kind: Literal["captions", "instructions", "grounding"] = "instructions",
    text_only_fraction: float = 0.15,
    overwrite: bool = False,
) -> Path:
    """Write `output_dir/data.json` and `output_dir/images/*.png`; returns the JSON path.

    Use `--data_path OUT/data.json --image_folder OUT/images`. The same seed gives the same files.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    rng = random.Random(seed)
    samples = []
    with staged_output(output_dir, overwrite) as staging:
        (staging / IMAGE_DIR).mkdir()
        for index in range(num_samples):
            sample_id = f"synthetic-{index:05d}"
            if kind == "instructions" and rng.random() < text_only_fraction:
                question, answer = rng.choice(TEXT_ONLY)
                samples.append({"id": sample_id, "conversations": turns((question, answer))})
                continue
            if kind == "grounding":
                image, regions = grounding_scene(rng)
                image.save(staging / IMAGE_DIR / f"{sample_id}.png")
                region = rng.choice(regions)
                samples.append({"id": sample_id, "image": f"{sample_id}.png",
                                "conversations": grounding_conversation(image.size, region),
                                "bbox": list(region[2])})  # the picture's own frame, for scoring
                continue
            shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
            count, background = rng.randint(1, 3), rng.choice(list(BACKGROUNDS))
            draw_scene(rng, shape, colour, count, background).save(staging / IMAGE_DIR / f"{sample_id}.png")
            if kind == "captions":
                rounds = [("describe the picture", f"{describe_scene(shape, colour, count)} on {background}")]
            else:
                rounds = [("what is in this image", describe_scene(shape, colour, count))]
                follow_ups = [
                    ("how many shapes are there", COUNT_WORDS[count - 1]),
                    (f"which colour is the {shape}", colour),
                ]
                if rng.random() < 0.5:
                    rounds.append(rng.choice(follow_ups))
            samples.append({"id": sample_id, "image": f"{sample_id}.png", "conversations": image_turns(*rounds)})
        (staging / DATA_FILE).write_text(json.dumps(samples, indent=1) + "\n")
    return Path(output_dir) / DATA_FILE


def turns(*rounds: tuple[str, str]) -> list[dict[str, str]]:
    return [turn for question, answer in rounds for turn in ({"from": "human", "value": question},
                                                             {"from": "gpt", "value": answer})]


def image_turns(*rounds: tuple[str, str]) -> list[dict[str, str]]:
    """`turns` about a picture: its first question starts with the `<image>` placeholder."""
    conversation = turns(*rounds)
    conversation[0]["value"] = f"<image>\n{conversation[0]['value']}"
    return conversation


__all__ = ["DATA_FILE", "GROUNDING_QUESTION", "IMAGE_DIR", "KINDS", "grounding_conversation", "grounding_scene",
           "image_turns", "make_synthetic_dataset", "turns"]
