"""lmms-eval runs `--model mmfuser_llava` on the bundled toy task and scores it as the project's evaluation does.

The venv holds what `pip install "mmfuser-llava[eval]"` brings (torch CPU, the project's dependencies, lmms-eval with
the `eval` extra's pins, CUDA-linked torchvision removed), cached; this clone's package goes in with `--no-deps` on
every run. lmms-eval exits 0 even when an evaluation fails, so everything is read from the files it writes.
"""

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from isolated_venv import cached_venv, run_as_user

from modeling_mmfuser_llava.demo import TRAINED_TINY_MODEL, write_trained_tiny_hub_folder
from transformers import AutoProcessor

from modeling_mmfuser_llava.experiment.evaluation import MAX_BOX_TOKENS, answers_by_id, grounding_precision, score
from modeling_mmfuser_llava.grounding import BoxFrame, format_box, to_padded_square_box
from modeling_mmfuser_llava.integrations.lmms_eval import MODEL_NAME, TASKS_DIR

pytestmark = pytest.mark.integration

CLONE = Path(__file__).resolve().parent.parent
TASK = "mmfuser_finegrained"
TASK_DIR = TASKS_DIR / TASK
GROUNDING_TASK = "mmfuser_grounding"
LMMS_EVAL_TIMEOUT_SECONDS = 600
# LLaVA-1.5's questions, as the plugin's RefCOCO tasks must ask them.
REC_QUESTION = "Please provide the bounding box coordinate of the region this sentence describes: "
REGION_CAPTION_QUESTION = "Please provide a short description for this region: "


def eval_requirements() -> list[str]:
    """What `pip install "mmfuser-llava[eval]"` resolves: the project's dependencies and its `eval` extra."""
    project = tomllib.loads((CLONE / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["eval"]]


@pytest.fixture(scope="module")
def lmms_eval_python(tmp_path_factory) -> Path:
    python = cached_venv("lmms-eval", eval_requirements())
    build = tmp_path_factory.mktemp("build")
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps", "--force-reinstall",
         CLONE], cwd=build, check=True, capture_output=True, timeout=600,
    )
    return python


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The bundled trained tiny model as a user gets it: a Hub folder with the model code beside the weights."""
    return write_trained_tiny_hub_folder(tmp_path_factory.mktemp("model") / "mmfuser-llava-tiny-trained")


@pytest.fixture(scope="module")
def reference() -> tuple[dict[str, str], dict[str, float]]:
    """The project's evaluation of the bundled model on the task's questions: answers by id, and their scores."""
    answers = answers_by_id(TRAINED_TINY_MODEL, TASK_DIR)  # `evaluate` is `score` of these
    return answers, score(TASK_DIR, answers)


def run_lmms_eval(
    python: Path, model_dir: Path, output: Path, batch_size: int, processes: int = 1, task: str = TASK
) -> tuple[dict, dict[str, str]]:
    """The documented command (with `processes`, under torchrun); returns lmms-eval's results for the bundled `task`
    and its answers by question id."""
    installed_tasks = run_as_user(
        python, ["-c", "from modeling_mmfuser_llava.integrations.lmms_eval import TASKS_DIR; print(TASKS_DIR)"],
        cwd=output.parent, timeout=120, installed=True,
    ).stdout.strip()
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes)] if processes > 1 else []
    run_as_user(
        python,
        [*launcher, "-m", "lmms_eval", "--model", MODEL_NAME, "--model_args", f"pretrained={model_dir},device=cpu",
         "--tasks", task, "--include_path", installed_tasks, "--batch_size", str(batch_size),
         "--output_path", output, "--log_samples"],
        cwd=output.parent, timeout=LMMS_EVAL_TIMEOUT_SECONDS, installed=True,
        HF_HOME=str(output.parent / "hf-home"), HF_DATASETS_OFFLINE="1",
    )
    results_files = sorted(output.rglob("*_results.json"))
    samples_files = sorted(output.rglob(f"*_samples_{task}.jsonl"))
    assert len(results_files) == 1 and len(samples_files) == 1, f"lmms-eval wrote {sorted(output.rglob('*'))}"
    samples = [json.loads(line) for line in samples_files[0].read_text().splitlines()]
    question_ids = [question["id"] for question in json.loads((TASKS_DIR / task / "test.json").read_text())]
    answers = {question_ids[sample["doc_id"]]: sample["filtered_resps"] for sample in samples}
    return json.loads(results_files[0].read_text())["results"][task], answers


def test_lmms_eval_scores_the_toy_task_as_the_project_evaluation(lmms_eval_python, model_dir, reference, tmp_path):
    """One process at batch size 8; two processes (data-parallel as on GPUs, here on the CPU under torchrun, lmms-eval
    gathering the answers) at batch size 1: both give the project evaluation's answers (batch 50), one by one."""
    batch_8, answers_8 = run_lmms_eval(lmms_eval_python, model_dir, tmp_path / "batch-8", batch_size=8)
    batch_1, answers_1 = run_lmms_eval(lmms_eval_python, model_dir, tmp_path / "batch-1", batch_size=1, processes=2)

    answers, accuracy = reference
    print(f"\nlmms-eval accuracy {batch_8['accuracy,none']} (batch 8), {batch_1['accuracy,none']} (batch 1, two "
          f"processes); project evaluation {accuracy['all']} on {len(answers)} questions", file=sys.stderr)
    assert answers_8 == answers and answers_1 == answers
    for results in (batch_8, batch_1):
        assert results["accuracy,none"] == pytest.approx(accuracy["all"])
        assert results["fine_accuracy,none"] == pytest.approx(accuracy["fine"])
        assert results["coarse_accuracy,none"] == pytest.approx(accuracy["coarse"])
    # The task is a real test: the tiny model gets most questions right, and not all of them.
    assert 0.5 < accuracy["all"] < 1


# COCO-like pictures wider and taller than square, each with a small region near an edge: `[width, height, [left,
# top, box width, box height]]` in pixels, as lmms-eval's RefCOCO data gives them.
REFCOCO_PICTURES = [[640, 427, [20, 10, 60, 40]], [427, 640, [300, 500, 80, 100]], [500, 333, [400, 250, 90, 70]]]


def test_the_refcoco_tasks_ask_and_score_in_the_model_s_frame(lmms_eval_python, tmp_path):
    """The sixteen region-level tasks and two groups load in lmms-eval; the region-caption question carries the box
    in the model's (padded-square) frame; a model grounding perfectly in its own frame scores 1 on the plugin's REC
    task, and 0 where the answer is scored as lmms-eval's stock task scores it (no frame conversion)."""
    probe = run_as_user(
        lmms_eval_python, [CLONE / "tests" / "lmms_eval_refcoco_probe.py", json.dumps(REFCOCO_PICTURES)],
        cwd=tmp_path, timeout=300, installed=True, HF_HOME=str(tmp_path / "hf-home"), HF_DATASETS_OFFLINE="1",
    )
    found = json.loads(probe.stdout.strip().splitlines()[-1])

    splits = [("refcoco", "val"), ("refcoco", "testA"), ("refcoco", "testB"), ("refcoco+", "val"),
              ("refcoco+", "testA"), ("refcoco+", "testB"), ("refcocog", "val"), ("refcocog", "test")]
    assert found["tasks"] == sorted(f"mmfuser_{data}_bbox{kind}_{split}" for data, split in splits
                                    for kind in ("", "_rec"))
    assert found["groups"] == ["mmfuser_rec", "mmfuser_region_caption"]
    assert found["rec_question"] == f"{REC_QUESTION}the thing"
    assert found["region_caption_questions"] == [
        REGION_CAPTION_QUESTION + format_box(to_padded_square_box(
            (left / width, top / height, (left + box_width) / width, (top + box_height) / height), width, height))
        for width, height, (left, top, box_width, box_height) in REFCOCO_PICTURES
    ]
    assert found["plugin_precision"] == 1
    assert found["stock_precision"] == 0


def test_lmms_eval_scores_the_toy_grounding_as_the_project_evaluation(lmms_eval_python, model_dir, tmp_path):
    """`mmfuser_grounding` through lmms-eval gives the project evaluation's answers, one by one, and its precision,
    which the same answers read without the frame conversion would not reach: a plugin that skipped it fails here."""
    task_dir = TASKS_DIR / GROUNDING_TASK
    answers = answers_by_id(TRAINED_TINY_MODEL, task_dir, max_new_tokens=MAX_BOX_TOKENS)
    precision = grounding_precision(task_dir, answers, BoxFrame.of(AutoProcessor.from_pretrained(TRAINED_TINY_MODEL)))
    assert precision >= grounding_precision(task_dir, answers, BoxFrame(padded_square=False)) + 0.2

    results, lmms_eval_answers = run_lmms_eval(lmms_eval_python, model_dir, tmp_path / "grounding", batch_size=8,
                                               task=GROUNDING_TASK)

    print(f"\nmmfuser_grounding: lmms-eval precision@0.5 {results['precision,none']}, project evaluation {precision} "
          f"on {len(answers)} questions", file=sys.stderr)
    assert lmms_eval_answers == answers
    assert results["precision,none"] == pytest.approx(precision)
