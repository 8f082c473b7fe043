"""lmms-eval's results files as model-card evaluation results (huggingface_hub `EvalResult`s), number for number.

Reads what `python -m lmms_eval --model mmfuser_llava ... --output_path DIR` writes (`DIR/<model>/<date>_results.json`)
with the standard library only, so a card can be written where lmms-eval is not installed. lmms-eval 0.7.3 records its
version as the `branch@commit` of its git checkout; installed from PyPI it records `unknown@unknown`, and the card then
names lmms-eval without a version rather than guess one.
"""

import json
import math
from pathlib import Path

from huggingface_hub import EvalResult

from . import MODEL_NAME

LMMS_EVAL_URL = "https://github.com/EvolvingLMMs-Lab/lmms-eval"
# The paper's benchmarks by the lmms-eval task that runs each (lmms-eval 0.7.3's task names).
PAPER_BENCHMARKS = {
    "vqav2_test": "VQAv2",
    "gqa": "GQA",
    "vizwiz_vqa_test": "VizWiz",
    "scienceqa_img": "ScienceQA-IMG",
    "textvqa_val": "TextVQA",
    "pope": "POPE",
    "mme": "MME",
    "mmbench_en_test": "MMBench",
    "mmbench_cn_test": "MMBench-CN",
    "seedbench": "SEED-Bench",
    "llava_in_the_wild": "LLaVA-Bench-in-the-Wild",
    "mmvet": "MM-Vet",
    "ocrbench": "OCRBench",
}


class LmmsEvalResultsError(ValueError):
    """A folder or file that does not hold usable lmms-eval results."""


def is_lmms_eval_results(path: str | Path) -> bool:
    """Whether `path` is a folder (lmms-eval's `--output_path`) or one of lmms-eval's `*_results.json` files."""
    path = Path(path)
    return path.is_dir() or path.name.endswith("_results.json")


def read_lmms_eval_results(path: str | Path) -> list[EvalResult]:
    """One `EvalResult` per task and metric of every `*_results.json` in `path` (a folder, searched recursively, or a
    file): the benchmark, the metric, its value as lmms-eval wrote it, and lmms-eval's version as the source.

    Refuses results of another model, results computed with `--limit` (lmms-eval's own warning: not real metrics),
    files that are not lmms-eval results and a folder with none; a metric whose value is not a number is left out.
    """
    path = Path(path)
    files = sorted(path.rglob("*_results.json")) if path.is_dir() else [path]
    if not files or not all(file.is_file() for file in files):
        raise LmmsEvalResultsError(f"no lmms-eval results (*_results.json, written by --output_path) at {path}")
    results = [result for file in files for result in _file_results(file)]
    if not results:
        raise LmmsEvalResultsError(f"the lmms-eval results at {path} hold no numeric metric")
    return results


def _file_results(file: Path) -> list[EvalResult]:
    try:
        document = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LmmsEvalResultsError(f"cannot read lmms-eval results {file}: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("results"), dict) or (
        "lmms_eval_version" not in document
    ):
        raise LmmsEvalResultsError(f"{file} is not an lmms-eval results file (no 'results' and 'lmms_eval_version')")
    run = document.get("config") or {}
    if run.get("model") != MODEL_NAME:
        raise LmmsEvalResultsError(f"{file} holds results of the model {run.get('model')!r}, not {MODEL_NAME!r}")
    if run.get("limit") is not None:
        raise LmmsEvalResultsError(f"{file} was computed on a --limit {run['limit']} subset: not a benchmark result")
    source = _source(document["lmms_eval_version"])
    configs = document.get("configs") or {}
    evaluated = []
    for task, metrics in document["results"].items():
        if not isinstance(metrics, dict):
            raise LmmsEvalResultsError(f"{file}: the results of {task!r} are not a mapping of metrics")
        for key, value in metrics.items():
            metric, _, metric_filter = key.partition(",")
            if "_stderr" in metric or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if not math.isfinite(value):
                continue
            evaluated.append(EvalResult(
                task_type="image-text-to-text",
                dataset_type=task,
                dataset_name=PAPER_BENCHMARKS.get(task, metrics.get("alias", task).strip()),
                dataset_split=(configs.get(task) or {}).get("test_split"),
                metric_type=metric,
                metric_value=value,
                metric_config=None if metric_filter in ("", "none") else metric_filter,
                source_name=source,
                source_url=LMMS_EVAL_URL,
            ))
    return evaluated


def _source(version: str) -> str:
    """lmms-eval with the version it recorded: `branch@commit` of a git checkout; a pip install records none."""
    return "lmms-eval" if "unknown" in str(version) else f"lmms-eval {version}"


__all__ = ["PAPER_BENCHMARKS", "LmmsEvalResultsError", "is_lmms_eval_results", "read_lmms_eval_results"]
