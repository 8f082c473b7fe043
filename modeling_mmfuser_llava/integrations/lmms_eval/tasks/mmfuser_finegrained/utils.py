"""The lmms-eval side of the `mmfuser_finegrained` task: the experiment's test questions, scored by exact match.

The bundled `test.json` and `images/` are the first 50 test pictures (200 questions) of the experiment's own task data,
`mmfuser-llava make-synthetic-data DIR --kind finegrained --num-samples 4000 --num-test 300` (seed 0), the data the
bundled trained tiny model was evaluated on; `mmfuser-llava experiment`'s `evaluation` reads the same files.
"""

from pathlib import Path

from PIL import Image

IMAGES = Path(__file__).parent / "images"
IMAGE_PREFIX = "<image>\n"


def doc_to_visual(doc: dict) -> list[Image.Image]:
    with Image.open(IMAGES / doc["image"]) as image:
        return [image.convert("RGB")]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return doc["conversations"][0]["value"].removeprefix(IMAGE_PREFIX)


def doc_to_target(doc: dict) -> str:
    return doc["conversations"][1]["value"]


def process_results(doc: dict, results: list[str]) -> dict:
    """Exact match, as the experiment's evaluation; the fine and coarse accuracies keep each answer's question group."""
    right = results[0] == doc_to_target(doc)
    grouped = (doc["fine_grained"], right)
    return {"accuracy": right, "fine_accuracy": grouped, "coarse_accuracy": grouped}


def fine_accuracy(items: list[tuple[bool, bool]]) -> float:
    return _accuracy([right for fine_grained, right in items if fine_grained])


def coarse_accuracy(items: list[tuple[bool, bool]]) -> float:
    return _accuracy([right for fine_grained, right in items if not fine_grained])


def _accuracy(results: list[bool]) -> float:
    return sum(results) / len(results)
