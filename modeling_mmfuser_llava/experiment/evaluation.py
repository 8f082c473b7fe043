"""Test-set accuracy of a trained model on the task: greedy answers, exact match, fine and coarse questions apart."""

import json
from collections import defaultdict
from pathlib import Path

from PIL import Image
from transformers import AutoProcessor

from ..demo import answer_batch
from ..modeling_mmfuser_llava import MMFuserLlavaForConditionalGeneration
from .task import FILES, IMAGE_DIR


def evaluate(model_dir: str | Path, task_dir: str | Path, batch_size: int = 50) -> dict[str, float]:
    """Accuracy over `test.json`: "all", "fine" (the marks' colour and pattern), "coarse" (the large shape's shape and
    colour), and one entry per question kind. An answer counts when it equals the reference exactly."""
    task_dir = Path(task_dir)
    model = MMFuserLlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    samples = json.loads((task_dir / FILES["test"]).read_text())
    correct = defaultdict(list)
    for start in range(0, len(samples), batch_size):
        batch = samples[start : start + batch_size]
        images = []
        for sample in batch:
            with Image.open(task_dir / IMAGE_DIR / sample["image"]) as image:
                images.append(image.convert("RGB"))
        questions = [sample["conversations"][0]["value"].removeprefix("<image>\n") for sample in batch]
        for sample, answer in zip(batch, answer_batch(model, processor, images, questions, max_new_tokens=6)):
            right = answer == sample["conversations"][1]["value"]
            for group in ("all", "fine" if sample["fine_grained"] else "coarse", sample["kind"]):
                correct[group].append(right)
    return {group: sum(results) / len(results) for group, results in correct.items()}


__all__ = ["evaluate"]
