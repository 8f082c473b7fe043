"""The paper's region-level benchmarks (Tables IV and V) on lmms-eval's own RefCOCO data, asked as LLaVA-1.5 asks.

lmms-eval's stock `refcoco*_bbox_rec_*` tasks score the model's box against a ground truth normalised by the picture's
own width and height, and its `refcoco*_bbox_*` captioning tasks draw the region on the picture. LLaVA-1.5 (and
MMFuser) were trained to read and write boxes as text on the picture padded to a square, so here the region-caption
question carries the box in that frame and the REC answer is mapped back to the picture's frame before lmms-eval's own
metric functions (IoU, precision at IoU 0.5, CIDEr...) score it, unchanged.
"""

from PIL import Image

from lmms_eval.tasks.refcoco.utils import (  # noqa: F401 (re-exported for the yaml's `!function utils.*`)
    refcoco_bleu4,
    refcoco_cider,
    refcoco_meteor,
    refcoco_process_result,
    refcoco_rougel,
)
from lmms_eval.tasks.refcoco.utils_rec import (  # noqa: F401
    refcoco_bbox_rec_acc05,
    refcoco_bbox_rec_center_acc,
    refcoco_bbox_rec_iou,
    refcoco_bbox_rec_preprocess_dataset,
)
from modeling_mmfuser_llava.grounding import first_box, format_box, project_frame

MODEL_FRAME = project_frame()
REC_QUESTION = "Please provide the bounding box coordinate of the region this sentence describes: "
REGION_CAPTION_QUESTION = "Please provide a short description for this region: "
NO_BOX = (0.0, 0.0, 0.0, 0.0)  # what lmms-eval's own REC parser scores when an answer holds no box
# The metrics of the yaml's `metric_list` (each scored by lmms-eval's function of that name).
REC_METRICS = ("IoU", "ACC@0.5", "Center_ACC")
REGION_CAPTION_METRICS = ("Bleu_4", "METEOR", "ROUGE_L", "CIDEr")


def picture(doc: dict) -> list[Image.Image]:
    """The picture as it is: the region is given as text in the question, not drawn."""
    return [doc["image"].convert("RGB")]


def rec_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return REC_QUESTION + doc["answer"]


def rec_process_results(doc: dict, results: list[str]) -> dict:
    """The answer's first box, from the model's frame to the picture's (the frame of lmms-eval's ground truth)."""
    box = first_box(results[0] if results else "")
    prediction = NO_BOX if box is None else MODEL_FRAME.to_image(box, doc["image_width"], doc["image_height"])
    scored = {"answer": doc["answer"], "pred": list(prediction), "ann_id": doc["question_id"], "bbox": doc["bbox"]}
    return {f"refcoco_{metric}": scored for metric in REC_METRICS}


def region_caption_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The region (lmms-eval's pixel box, top-left corner and size) normalised and put in the model's frame."""
    width, height = doc["image"].size
    left, top, box_width, box_height = doc["bbox"]
    box = (left / width, top / height, (left + box_width) / width, (top + box_height) / height)
    return REGION_CAPTION_QUESTION + format_box(MODEL_FRAME.to_model(box, width, height))


def region_caption_process_results(doc: dict, results: list[str]) -> dict:
    """lmms-eval's own captioning result, for the metrics this task reports."""
    scored = refcoco_process_result(doc, results)
    return {f"refcoco_{metric}": scored[f"refcoco_{metric}"] for metric in REGION_CAPTION_METRICS}
