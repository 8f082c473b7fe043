"""The lmms-eval side of the `mmfuser_finegrained` task: the experiment's test questions, scored by exact match.

The bundled `test.json` and `images/` are the first 50 test pictures (200 questions) of the experiment's own task data,
`mmfuser-llava make-synthetic-data DIR --kind finegrained --num-samples 4000 --num-test 300` (seed 0), the data the
bundled trained tiny model was evaluated on; `mmfuser-llava experiment`'s `evaluation` reads the same files.
"""

from pathlib import Path

from modeling_mmfuser_llava.integrations.lmms_eval.bundled_docs import BundledDocs

DOCS = BundledDocs(Path(__file__).parent / "images")
doc_to_visual, doc_to_text, doc_to_target = DOCS.doc_to_visual, DOCS.doc_to_text, DOCS.doc_to_target


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
