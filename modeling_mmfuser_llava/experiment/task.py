"""The toy experiment's task: questions about tiny marks beside a large shape, in the LLaVA JSON format.

Each 32x32 picture holds one large shape (its shape and colour are the *coarse* facts) and twelve to sixteen marks of
3x3 pixels, all of one colour and one pattern (block, cross or ring): the *fine-grained* facts. The pattern is detail
inside an 8x8 patch of the vision tower, a few pixels, which the tower's deep layers lose (see docs/research-toolkit.md). The texts mirror where the paper's models get theirs from:
- `clip_captions.json`: what the vision tower is pretrained on, like web alt-text it names only the large shape
  ("a red circle"), so a contrastive encoder has no reason to keep the marks in its deep layers;
- `stage1.json`: LLaVA-Pretrain-style captions naming everything (`--version plain`);
- `stage2.json`: the four questions about the picture as one multi-turn conversation, in random order (`v1`);
- `test.json`: one question per sample, each picture asked all four, for `evaluation`.

The harder variant (`marks_across_patches`) puts every mark across the border of two side-by-side patches, two of its
columns in one and one in the other, so that no single patch token holds a whole pattern: the detail has to be put
together from neighbouring tokens.

The grounding variant (`grounding`) adds as many pictures again for LLaVA-1.5's referring question, two shapes on a
non-square picture each asked for its box (see `add_grounding`), with `grounding_test.json` for the precision at IoU
0.5: the box is read in the model's frame, the picture padded to a square, so the model has to learn where the padding
puts the picture.

One seed gives the same files. Paths inside the JSON files are relative to `images/`.
"""

import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from ..hub_folder import staged_output
from ..training.synthetic import GROUNDING_QUESTION, grounding_conversation, grounding_scene, image_turns, turns

IMAGE_SIZE = 32
PATCH_SIZE = 8  # the vision tower's
SHAPES = ("circle", "square", "triangle", "diamond")
SHAPE_COLOURS = {"red": (215, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 215), "yellow": (230, 200, 30)}
# Colours no large shape has, so a mark is never lost against the shape it lies on.
MARK_COLOURS = {"purple": (140, 50, 170), "orange": (240, 130, 20), "black": (0, 0, 0), "cyan": (0, 190, 200)}
# The marks' 3x3 pixel patterns: what tells them apart is a few pixels.
MARK_PATTERNS = {
    "blocks": ((0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1), (0, 2), (1, 2), (2, 2)),
    "crosses": ((0, 0), (2, 0), (1, 1), (0, 2), (2, 2)),
    "rings": ((0, 0), (1, 0), (2, 0), (0, 1), (2, 1), (0, 2), (1, 2), (2, 2)),
}
MARK_CELL = 4  # marks sit in distinct cells of a 4-pixel grid, so they never overlap one another
# Enough marks that most 8x8 patches hold one: what sets the models apart is whether the pattern's few pixels reach
# the language model, not whether a 2-layer LLM trained on a CPU learns to search the picture for one mark.
MIN_MARKS, MAX_MARKS = 12, 16
# Question kind -> (question, whether it asks about the marks): the fine-grained kinds are the marks'.
QUESTIONS = {
    "mark_colour": ("what colour are the small marks", True),
    "mark_pattern": ("what shape are the small marks", True),
    "shape": ("what shape is the large object", False),
    "shape_colour": ("what colour is the large shape", False),
}
# Question kind -> every answer it can have.
ANSWERS = {"mark_colour": tuple(MARK_COLOURS), "mark_pattern": tuple(MARK_PATTERNS), "shape": SHAPES,
           "shape_colour": tuple(SHAPE_COLOURS)}
FILES = {"clip": "clip_captions.json", "stage1": "stage1.json", "stage2": "stage2.json", "test": "test.json",
         "grounding_test": "grounding_test.json"}
IMAGE_DIR = "images"


@dataclass(frozen=True)
class Scene:
    shape: str
    shape_colour: str
    mark_colour: str
    mark_pattern: str

    def answer(self, kind: str) -> str:
        return {"mark_colour": self.mark_colour, "mark_pattern": self.mark_pattern, "shape": self.shape,
                "shape_colour": self.shape_colour}[kind]

    def coarse_caption(self) -> str:
        return f"a {self.shape_colour} {self.shape}"

    def full_caption(self) -> str:
        return f"a {self.shape_colour} {self.shape} and small {self.mark_colour} {self.mark_pattern}"


def random_scene(rng: random.Random) -> Scene:
    return Scene(rng.choice(SHAPES), rng.choice(list(SHAPE_COLOURS)), rng.choice(list(MARK_COLOURS)),
                 rng.choice(list(MARK_PATTERNS)))


def mark_corners(rng: random.Random, across_patches: bool) -> list[tuple[int, int]]:
    """Top-left pixels of the picture's marks, in distinct cells of the 4-pixel grid (so they never overlap): anywhere
    in its cell, or `across_patches` astride a border between patch columns (two columns left of it, one right)."""
    cells_per_side = IMAGE_SIZE // MARK_CELL
    if not across_patches:
        return [(cell % cells_per_side * MARK_CELL + rng.randint(0, MARK_CELL - 3),
                 cell // cells_per_side * MARK_CELL + rng.randint(0, MARK_CELL - 3))
                for cell in rng.sample(range(cells_per_side**2), rng.randint(MIN_MARKS, MAX_MARKS))]
    borders = range(PATCH_SIZE, IMAGE_SIZE, PATCH_SIZE)
    cells = [(border - 2, row) for border in borders for row in range(cells_per_side)]
    return [(x, row * MARK_CELL + rng.randint(0, MARK_CELL - 3))
            for x, row in rng.sample(cells, rng.randint(MIN_MARKS, MAX_MARKS))]


def draw_scene(scene: Scene, rng: random.Random, marks_across_patches: bool = False) -> Image.Image:
    """The large shape (14-20 px) somewhere in the picture, then the marks on top (see `mark_corners`)."""
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    size = rng.randint(14, 20)
    left, top = rng.randint(1, IMAGE_SIZE - size - 1), rng.randint(1, IMAGE_SIZE - size - 1)
    right, bottom, middle_x, middle_y = left + size, top + size, left + size / 2, top + size / 2
    fill = SHAPE_COLOURS[scene.shape_colour]
    if scene.shape == "circle":
        draw.ellipse((left, top, right, bottom), fill=fill)
    elif scene.shape == "square":
        draw.rectangle((left, top, right, bottom), fill=fill)
    elif scene.shape == "triangle":
        draw.polygon([(middle_x, top), (left, bottom), (right, bottom)], fill=fill)
    else:
        draw.polygon([(middle_x, top), (right, middle_y), (middle_x, bottom), (left, middle_y)], fill=fill)
    for x, y in mark_corners(rng, marks_across_patches):
        for dx, dy in MARK_PATTERNS[scene.mark_pattern]:
            image.putpixel((x + dx, y + dy), MARK_COLOURS[scene.mark_colour])
    return image


def question_sample(sample_id: str, image: str, conversation: list[dict[str, str]]) -> dict:
    return {"id": sample_id, "image": image, "conversations": conversation}


def add_grounding(staging: Path, data: dict[str, list], num_train: int, num_test: int, seed: int) -> None:
    """The grounding variant's pictures and texts (`make-synthetic-data --kind grounding`'s scenes, from a stream of
    their own, so the task's other files are unchanged): each training picture with its alt-text for the tower and a
    referring question about one of its shapes, drawn at random, in stage 2; each test picture with one question per
    shape. One question, not both in one conversation: the second answer would be the box not given yet, which a
    model learns without reading the sentence (measured: same precision, 7 points more on the other questions)."""
    rng = random.Random(f"grounding-{seed}")
    for index in range(num_train + num_test):
        split = "train" if index < num_train else "test"
        picture, regions = grounding_scene(rng)
        image = f"grounding-{split}-{index:05d}.png"
        picture.save(staging / IMAGE_DIR / image)
        if split == "test":
            data["grounding_test"] += [
                {**question_sample(f"{image[:-4]}-{colour}-{shape}", image,
                                   grounding_conversation(picture.size, (colour, shape, box))), "bbox": list(box)}
                for colour, shape, box in regions]
            continue
        caption = " and ".join(f"a {colour} {shape}" for colour, shape, _ in regions)  # in order, along the long side
        data["clip"].append({"image": image, "caption": caption})
        data["stage1"].append({"id": f"{image[:-4]}-caption", "image": image, "conversations": turns(
            ("<image>", caption))})
        data["stage2"].append(question_sample(f"{image[:-4]}-boxes", image, grounding_conversation(
            picture.size, rng.choice(regions))))


def make_task_data(
    output_dir: str | Path, num_train: int = 4000, num_test: int = 300, seed: int = 0, overwrite: bool = False,
    marks_across_patches: bool = False, grounding: bool = False,
) -> Path:
    """Write the task's images and its four JSON files (`FILES`) into `output_dir`, all or nothing; returns it (the
    harder variant with `marks_across_patches`; with `grounding`, `num_train` and `num_test` more pictures for
    referring questions, see `add_grounding`, and `grounding_test.json`).

    Train and test pictures are drawn from one seeded stream, so no test picture repeats a training one by accident
    of seeding; test samples carry `kind` (see `QUESTIONS`) and `fine_grained` for the evaluation's breakdown.
    """
    if num_train < 1 or num_test < 1:
        raise ValueError(f"num_train and num_test must be at least 1, got {num_train} and {num_test}")
    rng = random.Random(seed)
    data = {name: [] for name in FILES}
    with staged_output(output_dir, overwrite) as staging:
        (staging / IMAGE_DIR).mkdir()
        for index in range(num_train + num_test):
            split = "train" if index < num_train else "test"
            scene = random_scene(rng)
            image = f"{split}-{index:05d}.png"
            draw_scene(scene, rng, marks_across_patches).save(staging / IMAGE_DIR / image)
            if split == "test":
                for kind, (question, fine_grained) in QUESTIONS.items():
                    sample = question_sample(f"{image[:-4]}-{kind}", image,
                                             image_turns((question, scene.answer(kind))))
                    data["test"].append({**sample, "kind": kind, "fine_grained": fine_grained})
                continue
            data["clip"].append({"image": image, "caption": scene.coarse_caption()})
            data["stage1"].append({"id": f"{image[:-4]}-caption", "image": image, "conversations": turns(
                ("<image>", scene.full_caption()))})
            kinds = rng.sample(list(QUESTIONS), len(QUESTIONS))
            data["stage2"].append(question_sample(f"{image[:-4]}-questions", image, image_turns(
                *[(QUESTIONS[kind][0], scene.answer(kind)) for kind in kinds])))
        if grounding:
            add_grounding(staging, data, num_train, num_test, seed)
        for name, file in FILES.items():
            if name != "grounding_test" or grounding:
                (staging / file).write_text(json.dumps(data[name], indent=1) + "\n")
    return Path(output_dir)


def task_words(grounding: bool = False) -> list[str]:
    """Every word the task's texts and the vicuna_v1 prompt use, for a tokenizer trained on them; with `grounding`,
    the referring questions' words and the characters of boxes too."""
    texts = [question for question, _ in QUESTIONS.values()]
    texts += [*SHAPES, *SHAPE_COLOURS, *MARK_COLOURS, *MARK_PATTERNS, "a and small", "USER: ASSISTANT:"]
    if grounding:
        texts += [GROUNDING_QUESTION, "the", "[ ] , . 0 1 2 3 4 5 6 7 8 9"]  # shapes and colours are the task's
    return sorted({word for text in texts for word in text.split()})


__all__ = [
    "ANSWERS",
    "FILES",
    "IMAGE_DIR",
    "MARK_COLOURS",
    "MARK_PATTERNS",
    "PATCH_SIZE",
    "QUESTIONS",
    "SHAPE_COLOURS",
    "SHAPES",
    "Scene",
    "draw_scene",
    "make_task_data",
    "mark_corners",
    "random_scene",
    "task_words",
]
