"""Run inside lmms-eval's venv by test_integration_lmms_eval.py: the plugin's RefCOCO tasks as lmms-eval loads them,
fed hand-made documents (no Hub); prints what the test checks, as JSON."""

import json
import sys

from datasets import Dataset
from lmms_eval.tasks import TaskManager
from lmms_eval.tasks.refcoco.utils_rec import refcoco_bbox_rec_acc05, refcoco_bbox_rec_process_result
from PIL import Image

from modeling_mmfuser_llava.integrations.lmms_eval import TASKS_DIR

sys.path.insert(0, str(TASKS_DIR / "mmfuser_refcoco"))
import utils  # noqa: E402 (the task's own module, as lmms-eval's `!function utils.*` finds it)

pictures = json.loads(sys.argv[1])  # [[width, height, [left, top, box_width, box_height]], ...] in pixels
manager = TaskManager(include_path=str(TASKS_DIR))
raw = Dataset.from_list([
    {"image": Image.new("RGB", (width, height)), "bbox": bbox, "answer": ["the thing"], "question_id": str(index)}
    for index, (width, height, bbox) in enumerate(pictures)
])
docs = list(utils.refcoco_bbox_rec_preprocess_dataset(raw))
# A model that grounds perfectly in its own frame: the ground truth put on the padded square, written as LLaVA does.
answers = [f"It is {utils.format_box(utils.MODEL_FRAME.to_model(doc['bbox'], doc['image_width'], doc['image_height']))}."
           for doc in docs]
print(json.dumps({
    "tasks": sorted(name for name in manager.all_tasks if name.startswith("mmfuser_refcoco")),
    "groups": sorted(name for name in manager.all_groups if name.startswith("mmfuser_")),
    "rec_question": utils.rec_doc_to_text(docs[0]),
    "region_caption_questions": [utils.region_caption_doc_to_text(row) for row in raw],
    "plugin_precision": refcoco_bbox_rec_acc05(
        [utils.rec_process_results(doc, [answer])["refcoco_ACC@0.5"] for doc, answer in zip(docs, answers)]),
    "stock_precision": refcoco_bbox_rec_acc05(
        [refcoco_bbox_rec_process_result(doc, [answer])["refcoco_ACC@0.5"] for doc, answer in zip(docs, answers)]),
}))
