"""Test-set accuracy of a trained model on the task: greedy answers, exact match, fine and coarse questions apart;
and precision at IoU 0.5 on referring questions (`make-synthetic-data --kind grounding`)."""

import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from PIL import Image
from transformers import AutoProcessor

from ..demo import answer_batch
from ..grounding import Box, BoxFrame, box_iou, first_box
from ..modeling_mmfuser_llava import MMFuserLlavaForConditionalGeneration
from .task import FILES, IMAGE_DIR

# The task's answers are single words; the experiment scores the first six new tokens.
MAX_ANSWER_TOKENS = 6
# A box, `[0.12, 0.34, 0.56, 0.78]`, is about 25 tokens.
MAX_BOX_TOKENS = 32


def evaluate(model_dir: str | Path, task_dir: str | Path, batch_size: int = 50) -> dict[str, float]:
    """Accuracy over `test.json` (see `score`) of the model's greedy answers."""
    return score(task_dir, answers_by_id(model_dir, task_dir, batch_size))


def score(task_dir: str | Path, answers: dict[str, str]) -> dict[str, float]:
    """Accuracy of `answers` (by question id) over `test.json`: "all", "fine" (the marks' colour and pattern),
    "coarse" (the large shape's shape and colour), and one entry per question kind. An answer counts when it equals
    the reference exactly."""
    samples = json.loads((Path(task_dir) / FILES["test"]).read_text())
    correct = defaultdict(list)
    for sample in samples:
        right = answers[sample["id"]] == sample["conversations"][1]["value"]
        for group in ("all", "fine" if sample["fine_grained"] else "coarse", sample["kind"]):
            correct[group].append(right)
    return {group: sum(results) / len(results) for group, results in correct.items()}


def answer_boxes(task_dir: Path, answers: dict[str, str], frame: BoxFrame,
                 test_file: str) -> Iterator[tuple[dict, Box | None]]:
    """Each sample of `test_file` with its answer's first box mapped from the model's `frame` to the picture's, or
    None where the answer has no box."""
    for sample in json.loads((task_dir / test_file).read_text()):
        box = first_box(answers[sample["id"]])
        if box is not None:
            with Image.open(task_dir / IMAGE_DIR / sample["image"]) as image:
                box = frame.to_image(box, *image.size)
        yield sample, box


def grounding_precision(task_dir: str | Path, answers: dict[str, str], frame: BoxFrame,
                        test_file: str = FILES["test"]) -> float:
    """Precision at IoU 0.5 of `answers` (by question id) over `test_file`: each answer's first box, mapped from the
    model's `frame` to the picture's, against the sample's `bbox`; an answer without a box misses."""
    hits = [box is not None and box_iou(box, sample["bbox"]) >= 0.5
            for sample, box in answer_boxes(Path(task_dir), answers, frame, test_file)]
    return sum(hits) / len(hits)


def other_region_precision(task_dir: str | Path, answers: dict[str, str], frame: BoxFrame,
                           test_file: str = FILES["test"]) -> float:
    """How often an answer's box lands (IoU 0.5) on another region asked about on the same picture instead of the
    one the sentence names: a model that boxes a shape without reading which scores about as high here as in
    `grounding_precision`, one that reads the sentence near 0."""
    task_dir = Path(task_dir)
    samples = json.loads((task_dir / test_file).read_text())
    regions_by_image = defaultdict(list)
    for sample in samples:
        regions_by_image[sample["image"]].append(sample)
    hits = [box is not None and any(box_iou(box, other["bbox"]) >= 0.5 for other in regions_by_image[sample["image"]]
                                    if other["id"] != sample["id"])
            for sample, box in answer_boxes(task_dir, answers, frame, test_file)]
    return sum(hits) / len(hits)


def evaluate_grounding(model_dir: str | Path, task_dir: str | Path, batch_size: int = 50) -> dict[str, float]:
    """Over the grounding variant's `grounding_test.json`, the model's greedy answers read in the frame its own
    processor implies: `grounding`, their precision@0.5 (`grounding_precision`), and `grounding_other`, how often
    they box the picture's other shape instead (`other_region_precision`)."""
    answers = answers_by_id(model_dir, task_dir, batch_size, MAX_BOX_TOKENS, FILES["grounding_test"])
    frame = BoxFrame.of(AutoProcessor.from_pretrained(model_dir))
    return {"grounding": grounding_precision(task_dir, answers, frame, FILES["grounding_test"]),
            "grounding_other": other_region_precision(task_dir, answers, frame, FILES["grounding_test"])}


def answers_by_id(
    model_dir: str | Path, task_dir: str | Path, batch_size: int = 50, max_new_tokens: int = MAX_ANSWER_TOKENS,
    test_file: str = FILES["test"],
) -> dict[str, str]:
    """The model's greedy answer to each question of `test_file`, by sample id."""
    task_dir = Path(task_dir)
    model = MMFuserLlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    samples = json.loads((task_dir / test_file).read_text())
    answers = {}
    for start in range(0, len(samples), batch_size):
        batch = samples[start : start + batch_size]
        images = []
        for sample in batch:
            with Image.open(task_dir / IMAGE_DIR / sample["image"]) as image:
                images.append(image.convert("RGB"))
        questions = [sample["conversations"][0]["value"].removeprefix("<image>\n") for sample in batch]
        generated = answer_batch(model, processor, images, questions, max_new_tokens=max_new_tokens)
        answers.update({sample["id"]: answer for sample, answer in zip(batch, generated)})
    return answers


__all__ = ["MAX_ANSWER_TOKENS", "MAX_BOX_TOKENS", "answers_by_id", "evaluate", "evaluate_grounding",
           "grounding_precision", "other_region_precision", "score"]
