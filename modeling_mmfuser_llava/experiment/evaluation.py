"""Test-set accuracy of a trained model on the task: greedy answers, exact match, fine and coarse questions apart."""

import json
from collections import defaultdict
from pathlib import Path

from PIL import Image
from transformers import AutoProcessor

from ..demo import answer_batch
from ..modeling_mmfuser_llava import MMFuserLlavaForConditionalGeneration
from .task import FILES, IMAGE_DIR

# The task's answers are single words; the experiment scores the first six new tokens.
MAX_ANSWER_TOKENS = 6


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


def answers_by_id(model_dir: str | Path, task_dir: str | Path, batch_size: int = 50) -> dict[str, str]:
    """The model's greedy answer to each question of `test.json`, by sample id."""
    task_dir = Path(task_dir)
    model = MMFuserLlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    samples = json.loads((task_dir / FILES["test"]).read_text())
    answers = {}
    for start in range(0, len(samples), batch_size):
        batch = samples[start : start + batch_size]
        images = []
        for sample in batch:
            with Image.open(task_dir / IMAGE_DIR / sample["image"]) as image:
                images.append(image.convert("RGB"))
        questions = [sample["conversations"][0]["value"].removeprefix("<image>\n") for sample in batch]
        generated = answer_batch(model, processor, images, questions, max_new_tokens=MAX_ANSWER_TOKENS)
        answers.update({sample["id"]: answer for sample, answer in zip(batch, generated)})
    return answers


__all__ = ["MAX_ANSWER_TOKENS", "answers_by_id", "evaluate", "score"]
