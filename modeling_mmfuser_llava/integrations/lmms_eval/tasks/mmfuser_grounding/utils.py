"""The lmms-eval side of the `mmfuser_grounding` task: the toy referring questions, scored as the project scores them.

The bundled `test.json` and `images/` are `mmfuser-llava make-synthetic-data DIR --kind grounding --num-samples 24
--seed 100` (`data.json` renamed); `experiment.evaluation.grounding_precision` scores the same files. `max_new_tokens`
in the yaml is the evaluation's `MAX_BOX_TOKENS`.
"""

from pathlib import Path

from lmms_eval.tasks.refcoco.utils_rec import refcoco_bbox_rec_acc05  # noqa: F401 (the yaml's aggregation)

from modeling_mmfuser_llava.grounding import first_box, project_frame
from modeling_mmfuser_llava.integrations.lmms_eval.bundled_docs import BundledDocs

DOCS = BundledDocs(Path(__file__).parent / "images")
doc_to_visual, doc_to_text, doc_to_target = DOCS.doc_to_visual, DOCS.doc_to_text, DOCS.doc_to_target
MODEL_FRAME = project_frame()
NO_BOX = (0.0, 0.0, 0.0, 0.0)  # scores no overlap, as lmms-eval's own REC parser does for an answer without a box


def process_results(doc: dict, results: list[str]) -> dict:
    """The answer's first box in the picture's frame, beside the ground truth, for lmms-eval's precision@0.5."""
    box = first_box(results[0])
    if box is not None:
        box = MODEL_FRAME.to_image(box, *DOCS.picture_size(doc))
    return {"precision": {"pred": list(box or NO_BOX), "bbox": doc["bbox"]}}
