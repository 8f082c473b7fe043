"""The lmms-eval side of the `mmfuser_grounding` task: the toy referring questions, scored as the project scores them.

The bundled `test.json` and `images/` are `mmfuser-llava make-synthetic-data DIR --kind grounding --num-samples 24
--seed 100` (`data.json` renamed); `experiment.evaluation.grounding_precision` scores the same files. `max_new_tokens`
in the yaml is the evaluation's `MAX_BOX_TOKENS`.
"""

from pathlib import Path

from lmms_eval.tasks.refcoco.utils_rec import refcoco_bbox_rec_acc05  # noqa: F401 (the yaml's aggregation)
from PIL import Image

from modeling_mmfuser_llava.grounding import first_box, project_frame

IMAGES = Path(__file__).parent / "images"
IMAGE_PREFIX = "<image>\n"
MODEL_FRAME = project_frame()
NO_BOX = (0.0, 0.0, 0.0, 0.0)  # scores no overlap, as lmms-eval's own REC parser does for an answer without a box


def doc_to_visual(doc: dict) -> list[Image.Image]:
    with Image.open(IMAGES / doc["image"]) as image:
        return [image.convert("RGB")]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return doc["conversations"][0]["value"].removeprefix(IMAGE_PREFIX)


def doc_to_target(doc: dict) -> str:
    return doc["conversations"][1]["value"]


def process_results(doc: dict, results: list[str]) -> dict:
    """The answer's first box in the picture's frame, beside the ground truth, for lmms-eval's precision@0.5."""
    box = first_box(results[0])
    if box is not None:
        with Image.open(IMAGES / doc["image"]) as image:
            box = MODEL_FRAME.to_image(box, *image.size)
    return {"precision": {"pred": list(box or NO_BOX), "bbox": doc["bbox"]}}
