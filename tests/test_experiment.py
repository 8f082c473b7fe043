"""The toy experiment: its task data, the pipeline end to end on a tiny budget, and the table it prints."""

import json
import random
from collections import Counter

import pytest
import torch
from PIL import Image
from transformers import CLIPVisionModel

from modeling_mmfuser_llava.cli import main
from modeling_mmfuser_llava.experiment.comparison import (
    BEST_MMFUSER_DIR,
    ExperimentSettings,
    format_table,
    run_experiment,
    summarize,
)
from modeling_mmfuser_llava.experiment.demo_model import MODEL_FILES, bundle_demo_model
from modeling_mmfuser_llava.experiment.layer_probe import probe_layers
from modeling_mmfuser_llava.experiment.recipe import RecipeBudget
from modeling_mmfuser_llava.experiment.task import (
    FILES,
    IMAGE_DIR,
    IMAGE_SIZE,
    MARK_COLOURS,
    MARK_PATTERNS,
    MAX_MARKS,
    MIN_MARKS,
    PATCH_SIZE,
    SHAPE_COLOURS,
    QUESTIONS,
    SHAPES,
    make_task_data,
    mark_corners,
)
from modeling_mmfuser_llava.experiment.vision_pretraining import tiny_clip_config
from modeling_mmfuser_llava.grounding import first_box, from_padded_square_box
from modeling_mmfuser_llava.modeling_mmfuser_llava import MMFuserLlavaForConditionalGeneration
from modeling_mmfuser_llava.training.synthetic import GROUNDING_QUESTION, GROUNDING_SHAPES


def assert_same_tensors(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first and list(first) == list(second)
    for key, value in first.items():
        assert torch.equal(value, second[key]), key


TASK_FILES = ("clip", "stage1", "stage2", "test")  # the default task's; the grounding variant adds grounding_test


def read(folder, name):
    return json.loads((folder / FILES[name]).read_text())


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return make_task_data(tmp_path_factory.mktemp("task") / "task", num_train=24, num_test=6, seed=3)


def test_task_files_hold_what_each_stage_needs(task):
    clip, stage1, stage2, test = (read(task, name) for name in ("clip", "stage1", "stage2", "test"))
    assert len(clip) == len(stage1) == len(stage2) == 24 and len(test) == 6 * 4
    # Alt-text for CLIP names the large shape only; the stage-1 caption names the dot as well.
    assert all(record["caption"].split()[1:] in ([c, s] for c in SHAPE_COLOURS for s in SHAPES) for record in clip)
    assert all("small" in sample["conversations"][1]["value"] for sample in stage1)
    assert all(len(sample["conversations"]) == 8 for sample in stage2)
    kinds = {sample["kind"]: sample["fine_grained"] for sample in test}
    assert kinds == {"mark_colour": True, "mark_pattern": True, "shape": False, "shape_colour": False}
    assert not {sample["image"] for sample in test} & {sample["image"] for sample in stage2}


def test_the_answers_are_in_the_pictures(task):
    """Twelve to sixteen marks of the stated colour and 3x3 pattern, one per grid cell; the large shape's colour too."""
    by_image = {}
    for sample in read(task, "test"):
        by_image.setdefault(sample["image"], {})[sample["kind"]] = sample["conversations"][1]["value"]
    for image_name, answers in by_image.items():
        with Image.open(task / IMAGE_DIR / image_name) as image:
            pixels = torch.tensor(list(image.getdata())).view(32, 32, 3)
        assert (pixels == torch.tensor(SHAPE_COLOURS[answers["shape_colour"]])).all(-1).sum() > 50
        is_mark = (pixels == torch.tensor(MARK_COLOURS[answers["mark_colour"]])).all(-1)
        marks = {}
        for y, x in is_mark.nonzero().tolist():
            marks.setdefault((y // 4, x // 4), []).append((x, y))
        assert MIN_MARKS <= len(marks) <= MAX_MARKS
        for points in marks.values():
            left, top = min(x for x, _ in points), min(y for _, y in points)
            assert {(x - left, y - top) for x, y in points} == set(MARK_PATTERNS[answers["mark_pattern"]])


def test_task_data_is_seeded(task, tmp_path):
    again = make_task_data(tmp_path / "again", num_train=24, num_test=6, seed=3)
    other = make_task_data(tmp_path / "other", num_train=24, num_test=6, seed=4)
    assert sorted(path.name for path in again.iterdir()) == sorted(path.name for path in task.iterdir())
    for name in TASK_FILES:
        assert (again / FILES[name]).read_bytes() == (task / FILES[name]).read_bytes()
    assert (other / FILES["stage2"]).read_bytes() != (task / FILES["stage2"]).read_bytes()
    for image in (task / IMAGE_DIR).iterdir():
        assert (again / IMAGE_DIR / image.name).read_bytes() == image.read_bytes()


def test_make_synthetic_data_writes_the_task(tmp_path, capsys):
    argv = ["make-synthetic-data", str(tmp_path / "cli"), "--kind", "finegrained", "--num-samples", "24",
            "--num-test", "6", "--seed", "3"]
    assert main(argv) == 0
    direct = make_task_data(tmp_path / "direct", num_train=24, num_test=6, seed=3)
    for name in TASK_FILES:
        assert (tmp_path / "cli" / FILES[name]).read_bytes() == (direct / FILES[name]).read_bytes()
    assert f"--image_folder {tmp_path / 'cli' / IMAGE_DIR}" in capsys.readouterr().out


def test_summary_and_table():
    runs = [{"model": "mmfuser", "seed": seed, "accuracy": dict.fromkeys(
        ("all", "fine", "coarse", *QUESTIONS), value)}
        for seed, value in enumerate((0.5, 0.7, 0.9))]
    summary = summarize(runs, ("mmfuser",))
    mean, spread = summary["mmfuser"]["fine"]
    assert mean == pytest.approx(0.7) and spread == pytest.approx(0.2)
    assert "| mmfuser | 70.0 ± 20.0 |" in format_table(summary, 3)


TINY_SETTINGS = ExperimentSettings(seeds=(0,), models=("llava", "mmfuser"), num_train=64, num_test=3, probe_steps=2,
                                   budget=RecipeBudget(max_steps=2, batch_size=4))


@pytest.fixture(scope="module")
def tiny_experiment(tmp_path_factory):
    """The experiment on a tiny budget (two models, one seed, two steps per stage): its folder and results."""
    output = tmp_path_factory.mktemp("experiment") / "out"
    return output, run_experiment(output, TINY_SETTINGS, workers=1)


def test_experiment_reproduces_exactly_with_the_same_workers(tiny_experiment, tmp_path):
    """The documented claim: the same command with the same --workers gives the same numbers and the same weights."""
    first_dir, first = tiny_experiment
    again = run_experiment(tmp_path / "again", TINY_SETTINGS, workers=1)
    for key in ("pretraining_loss", "layer_probe", "summary"):
        assert again[key] == first[key], key
    assert [{**run, "seconds": 0} for run in again["runs"]] == [{**run, "seconds": 0} for run in first["runs"]]
    for folder in (BEST_MMFUSER_DIR, "base/clip", "runs/llava-seed0/stage2"):
        files = sorted(path.relative_to(first_dir) for path in (first_dir / folder).glob("*.safetensors"))
        assert files, folder
        for name in files:
            assert (tmp_path / "again" / name).read_bytes() == (first_dir / name).read_bytes(), name


def test_experiment_runs_end_to_end_on_a_tiny_budget(tiny_experiment, tmp_path):
    """Every stage of the pipeline, two compared models, one seed, two steps per stage: the wiring, not the science."""
    output, results = tiny_experiment
    assert [(run["model"], run["seed"]) for run in results["runs"]] == [("llava", 0), ("mmfuser", 0)]
    assert [run["checkpoint"] for run in results["runs"]] == ["runs/llava-seed0/stage2", "runs/mmfuser-seed0/stage2"]
    assert json.loads((output / "results.json").read_text())["runs"] == results["runs"]
    assert sorted(path.name for path in output.parent.iterdir()) == ["out"]  # the staging folder became `out`
    for run in results["runs"]:
        assert 0 <= run["accuracy"]["all"] <= 1 and set(run["accuracy"]) >= {"fine", "coarse"}
    table = (output / "results.md").read_text()
    assert table.startswith("| model (1 seeds) |") and "| llava |" in table and "| mmfuser |" in table
    # What each of the tower's 9 hidden states holds of each fact, as accuracies.
    assert set(results["layer_probe"]) == set(QUESTIONS)
    assert all(len(values) == 9 and all(0 <= value <= 1 for value in values)
               for values in results["layer_probe"].values())
    assert "| mark_pattern |" in table
    best = MMFuserLlavaForConditionalGeneration.from_pretrained(output / BEST_MMFUSER_DIR)
    assert best.config.fuser_fusion == "mmfuser" and best.config.fuser_num_heads == 4
    baseline = MMFuserLlavaForConditionalGeneration.from_pretrained(output / "runs" / "llava-seed0" / "stage2")
    assert baseline.config.fuser_fusion == "none"
    # Both started from the same frozen tower: identical vision weights.
    assert_same_tensors(best.model.vision_tower.state_dict(), baseline.model.vision_tower.state_dict())
    with pytest.raises(FileExistsError, match="not empty"):
        run_experiment(output, TINY_SETTINGS)
    # Bundling the best run as the demo model: model and processor files only, the same weights.
    examples = bundle_demo_model(output / BEST_MMFUSER_DIR, output / "task", num_examples=2,
                                 model_dir=tmp_path / "bundle", examples_dir=tmp_path / "examples")
    assert sorted(path.name for path in (tmp_path / "bundle").iterdir()) == sorted(MODEL_FILES)
    bundled = MMFuserLlavaForConditionalGeneration.from_pretrained(tmp_path / "bundle")
    assert_same_tensors(bundled.state_dict(), best.state_dict())
    listed = json.loads((tmp_path / "examples" / "examples.json").read_text())
    assert listed == examples and len(examples) <= 2
    assert all((tmp_path / "examples" / example["image"]).is_file() for example in examples)


def test_experiment_refuses_bad_settings_before_writing_anything(tmp_path):
    with pytest.raises(ValueError, match="unknown models"):
        run_experiment(tmp_path / "out", ExperimentSettings(models=("llava", "fancy")))
    with pytest.raises(ValueError, match="workers must be at least 1"):
        run_experiment(tmp_path / "out", workers=0)
    with pytest.raises(ValueError, match="num_train and num_test must be at least 1"):
        run_experiment(tmp_path / "out", ExperimentSettings(num_test=0))
    assert list(tmp_path.iterdir()) == []  # no output folder, no staging folder left behind


def test_experiment_command_rejects_an_unknown_model(capsys):
    with pytest.raises(SystemExit):
        main(["experiment", "out", "--models", "fancy"])
    assert "invalid choice: 'fancy'" in capsys.readouterr().err


def test_layer_probe_reads_what_a_layer_holds(tmp_path):
    """On an untrained tower the embeddings still hold the large shape's colour, which a probe must find; on a tower
    blind to its pixels (zero patch embedding) it can do no better than always naming one colour."""
    task = make_task_data(tmp_path / "task", num_train=300, num_test=60, seed=0)
    torch.manual_seed(0)
    tower = CLIPVisionModel(tiny_clip_config(10, 9).vision_config)
    tower.save_pretrained(tmp_path / "tower")
    accuracy = probe_layers(tmp_path / "tower", task, steps=60, kinds=("shape_colour",))["shape_colour"]
    assert len(accuracy) == 9 and accuracy[0] >= 0.9
    with torch.no_grad():
        tower.embeddings.patch_embedding.weight.zero_()
    tower.save_pretrained(tmp_path / "blind")
    most_frequent = max(Counter(sample["conversations"][1]["value"] for sample in read(task, "test")
                                if sample["kind"] == "shape_colour").values()) / 60
    blind = probe_layers(tmp_path / "blind", task, steps=60, kinds=("shape_colour",))["shape_colour"]
    assert max(blind) <= most_frequent + 1e-6


@pytest.mark.parametrize("across_patches", [False, True])
def test_marks_lie_within_a_patch_or_astride_two(across_patches):
    """The default task keeps each 3x3 mark inside one patch; the harder variant splits every mark between two
    side-by-side patches (two columns in one, one in the other), so no patch token holds a whole pattern."""
    rng = random.Random(0)
    for _ in range(200):
        corners = mark_corners(rng, across_patches)
        assert MIN_MARKS <= len(corners) <= MAX_MARKS
        assert len({(x // 4, y // 4) for x, y in corners}) == len(corners)  # distinct cells: no overlap
        for x, y in corners:
            assert 0 <= x <= IMAGE_SIZE - 3 and 0 <= y <= IMAGE_SIZE - 3
            assert y // PATCH_SIZE == (y + 2) // PATCH_SIZE
            patches = (x // PATCH_SIZE, (x + 1) // PATCH_SIZE, (x + 2) // PATCH_SIZE)
            assert patches == ((patches[0],) * 2 + (patches[0] + 1,) if across_patches else (patches[0],) * 3)


def test_the_harder_variant_is_seeded(tmp_path):
    harder = make_task_data(tmp_path / "harder", num_train=8, num_test=2, seed=3, marks_across_patches=True)
    again = make_task_data(tmp_path / "again", num_train=8, num_test=2, seed=3, marks_across_patches=True)
    default = make_task_data(tmp_path / "default", num_train=8, num_test=2, seed=3)
    assert read(harder, "test") == read(again, "test")
    assert len(read(harder, "test")) == len(read(default, "test"))
    pictures = sorted(path.name for path in (harder / IMAGE_DIR).iterdir())
    assert all((harder / IMAGE_DIR / name).read_bytes() == (again / IMAGE_DIR / name).read_bytes() for name in pictures)
    assert any((harder / IMAGE_DIR / name).read_bytes() != (default / IMAGE_DIR / name).read_bytes() for name in pictures)


def test_the_grounding_variant_adds_referring_questions_and_leaves_the_task_as_it_was(task, tmp_path):
    """`grounding`: as many non-square pictures again, their alt-text for the tower and their caption for stage 1 (the
    shapes in order along the long side), a referring question about one shape in stage 2, one test question per
    shape whose answer is its box on the padded square; the default task's samples and pictures byte for byte as they
    were, and no test picture among the training ones."""
    grounded = make_task_data(tmp_path / "grounded", num_train=24, num_test=6, seed=3, grounding=True)

    assert not (task / FILES["grounding_test"]).exists()
    assert (grounded / FILES["test"]).read_bytes() == (task / FILES["test"]).read_bytes()
    for name in ("clip", "stage1", "stage2"):
        assert read(grounded, name)[:24] == read(task, name) and len(read(grounded, name)) == 48
    assert all((grounded / IMAGE_DIR / image.name).read_bytes() == image.read_bytes()
               for image in (task / IMAGE_DIR).iterdir())
    referring = read(grounded, "stage2")[24:]
    tests = read(grounded, "grounding_test")
    assert len(referring) == 24 and len(tests) == 6 * GROUNDING_SHAPES
    assert all(len(sample["conversations"]) == 2 for sample in referring)
    captions_by_image = {record["image"]: record["caption"] for record in read(grounded, "clip")}
    named = [sample["conversations"][0]["value"].removeprefix(f"<image>\n{GROUNDING_QUESTION}the ")
             for sample in referring]
    # the question names one of the picture's shapes, and not always the same one of the two
    positions = {captions_by_image[sample["image"]].split(" and ").index(f"a {shape}")
                 for sample, shape in zip(referring, named)}
    assert positions == set(range(GROUNDING_SHAPES))
    captions = [record["caption"] for record in read(grounded, "clip")[24:]]
    assert {caption.count(" and ") for caption in captions} == {GROUNDING_SHAPES - 1}
    assert captions == [sample["conversations"][1]["value"] for sample in read(grounded, "stage1")[24:]]
    assert not {sample["image"] for sample in tests} & {sample["image"] for sample in referring}
    for sample in tests:
        question, answer = (turn["value"] for turn in sample["conversations"])
        assert question.startswith(f"<image>\n{GROUNDING_QUESTION}the ")
        with Image.open(grounded / IMAGE_DIR / sample["image"]) as image:
            width, height = image.size
        assert max(width, height) >= 1.5 * min(width, height)
        side = max(width, height)
        assert from_padded_square_box(first_box(answer), width, height) == pytest.approx(
            sample["bbox"], abs=0.005 * side / min(width, height) + 1e-9)


def test_the_grounding_variant_s_tokenizer_writes_boxes_with_its_own_pieces(tmp_path):
    """The base LLM's tokenizer of the grounding variant has a piece for each character of a box and each word of
    the referring question (no byte fallback), so a box costs one token per character; the default task's has none."""
    from modeling_mmfuser_llava.experiment.task import task_words
    from modeling_mmfuser_llava.tiny import build_tiny_tokenizer, train_tiny_sentencepiece

    text = f"{GROUNDING_QUESTION}the red circle [0.08, 0.25, 0.49, 1.00]"
    grounded = build_tiny_tokenizer(train_tiny_sentencepiece(512, 0, task_words(grounding=True)))
    default = build_tiny_tokenizer(train_tiny_sentencepiece(512, 0, task_words()))
    pieces = grounded.tokenize(text)
    assert not [piece for piece in pieces if piece.startswith("<0x")]
    assert grounded.convert_tokens_to_string(pieces) == text
    assert [piece for piece in default.tokenize(text) if piece.startswith("<0x")]


def test_the_grounding_variant_runs_end_to_end_and_reports_precision(tmp_path, monkeypatch):
    """`--grounding` on a tiny budget: each run's results hold its precision@0.5 over the grounding test, as the
    evaluation scores the run's own answers in its processor's frame, and how often they box the other shape; the
    table gets both columns. Given the references as answers, `evaluate_grounding` scores 1 and 0: it reads the
    grounding test in the padded square; given each picture's other reference, 0 and 1."""
    from dataclasses import replace

    from transformers import AutoProcessor

    from modeling_mmfuser_llava.experiment.evaluation import (
        MAX_BOX_TOKENS,
        answers_by_id,
        grounding_precision,
        other_region_precision,
    )
    from modeling_mmfuser_llava.grounding import BoxFrame

    settings = replace(TINY_SETTINGS, models=("mmfuser",), num_test=2, grounding=True)
    results = run_experiment(tmp_path / "out", settings, workers=1)

    (run,) = results["runs"]
    checkpoint, task = tmp_path / "out" / run["checkpoint"], tmp_path / "out" / "task"
    answers = answers_by_id(checkpoint, task, max_new_tokens=MAX_BOX_TOKENS, test_file=FILES["grounding_test"])
    assert len(answers) == 2 * GROUNDING_SHAPES
    frame = BoxFrame.of(AutoProcessor.from_pretrained(checkpoint))
    assert frame.padded_square
    # the base LLM was saved by a Trainer (use_cache off): the trained model still generates with the cache
    assert json.loads((tmp_path / "out" / "base" / "llm" / "config.json").read_text())["use_cache"] is False
    assert json.loads((checkpoint / "config.json").read_text())["text_config"]["use_cache"] is True
    assert json.loads((checkpoint / "generation_config.json").read_text())["use_cache"] is True
    assert run["accuracy"]["grounding"] == grounding_precision(task, answers, frame, FILES["grounding_test"])
    assert run["accuracy"]["grounding_other"] == other_region_precision(task, answers, frame, FILES["grounding_test"])
    assert results["summary"]["mmfuser"]["grounding"] == (run["accuracy"]["grounding"], 0.0)
    assert (tmp_path / "out" / "results.md").read_text().splitlines()[0].endswith(" | grounding | grounding_other |")

    from modeling_mmfuser_llava.experiment import evaluation

    references = {sample["id"]: sample["conversations"][1]["value"] for sample in read(task, "grounding_test")}
    monkeypatch.setattr(evaluation, "answers_by_id", lambda *args, **kwargs: references)
    assert evaluation.evaluate_grounding(checkpoint, task) == {"grounding": 1, "grounding_other": 0}
    assert grounding_precision(task, references, BoxFrame(padded_square=False), FILES["grounding_test"]) < 1
    # each question answered with the box of the picture's other shape (the test holds them in pairs)
    ids = list(references)
    swapped = {ids[index]: references[ids[index ^ 1]] for index in range(len(ids))}
    samples = read(task, "grounding_test")
    assert all(samples[index]["image"] == samples[index ^ 1]["image"] for index in range(len(samples)))
    monkeypatch.setattr(evaluation, "answers_by_id", lambda *args, **kwargs: swapped)
    assert evaluation.evaluate_grounding(checkpoint, task) == {"grounding": 0, "grounding_other": 1}
