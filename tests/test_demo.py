"""`mmfuser-llava demo`: writes the bundled trained tiny model as a Hub folder, reloads it with trust_remote_code, and
answers about the bundled example pictures: correctly."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_mmfuser_llava import demo
from modeling_mmfuser_llava.cli import main
from modeling_mmfuser_llava.demo import (
    EXAMPLE_IMAGE,
    answer_batch,
    bundled_examples,
    load_for_inference,
    run_demo,
    write_tiny_hub_folder,
    write_trained_tiny_hub_folder,
)
from modeling_mmfuser_llava.experiment.task import QUESTIONS
from modeling_mmfuser_llava.grounding import format_box, to_padded_square_box

from conftest import bundled_questions


def printed_fields(printed: str) -> dict[str, str]:
    """The demo's `label: value` lines."""
    return {label: value.strip() for label, value in (line.split(":", 1) for line in printed.splitlines())}


def test_demo_writes_reloads_and_answers_right(tmp_path, capsys):
    assert main(["demo", "--save-dir", str(tmp_path / "tiny")]) == 0
    printed = printed_fields(capsys.readouterr().out)
    assert printed["model"] == str(tmp_path / "tiny")
    assert printed["time"].endswith(" s (load through trust_remote_code + generate)")
    config = json.loads((tmp_path / "tiny" / "config.json").read_text())
    assert config["model_type"] == "mmfuser_llava" and "AutoModelForImageTextToText" in config["auto_map"]
    assert (tmp_path / "tiny" / "modeling_mmfuser_llava.py").is_file()  # the code travels with the weights
    # It generates with a KV cache (a training run saves the Trainer's use_cache=False unless undone).
    generation_config = json.loads((tmp_path / "tiny" / "generation_config.json").read_text())
    assert generation_config.get("use_cache", True) is True and config["text_config"].get("use_cache", True) is True
    example = bundled_examples()[0]
    # The output reads on its own: which picture, what was asked, the answer and the right one.
    assert printed["picture"] == str(example["image"]) and printed["question"] == example["questions"][0]["question"]
    assert printed["answer"] == printed["right answer"] == example["questions"][0]["answer"]


def test_demo_prints_the_picture_and_question_it_was_given(tmp_path, capsys):
    write_trained_tiny_hub_folder(tmp_path / "tiny")
    example = bundled_examples()[2]
    question = example["questions"][3]
    assert main(["demo", "--model", str(tmp_path / "tiny"), "--image", str(example["image"]),
                 "--prompt", question["question"], "--max-new-tokens", "4"]) == 0
    printed = printed_fields(capsys.readouterr().out)
    assert list(printed) == ["picture", "question", "answer", "right answer", "model", "time"]
    assert printed["picture"] == str(example["image"]) and printed["question"] == question["question"]
    assert printed["answer"] == printed["right answer"] == question["answer"]


def test_demo_refuses_to_replace_a_folder_it_did_not_write(tmp_path, capsys):
    """--save-dir over a user's folder: a clear error, nothing touched; --overwrite replaces it; a previous demo's
    folder (or an empty one) is replaced without it."""
    save_dir = tmp_path / "mine"
    save_dir.mkdir()
    (save_dir / "notes.txt").write_text("keep me")
    assert main(["demo", "--save-dir", str(save_dir), "--max-new-tokens", "1"]) == 2
    assert "is not a model folder written by the demo: pass overwrite=True (--overwrite)" in capsys.readouterr().err
    assert [path.name for path in tmp_path.iterdir()] == ["mine"] and (save_dir / "notes.txt").read_text() == "keep me"
    not_the_demo_model = tmp_path / "other-model"
    write_tiny_hub_folder(not_the_demo_model)  # a model folder with the same file names, another model's config
    with pytest.raises(FileExistsError, match="not a model folder written by the demo"):
        run_demo(save_dir=not_the_demo_model, max_new_tokens=1)
    assert main(["demo", "--save-dir", str(save_dir), "--max-new-tokens", "1", "--overwrite"]) == 0
    assert not (save_dir / "notes.txt").exists() and (save_dir / "model.safetensors").is_file()
    assert run_demo(save_dir=save_dir, max_new_tokens=1).model_path == str(save_dir)  # a previous demo's folder
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_demo(save_dir=empty, max_new_tokens=1).model_path == str(empty)
    capsys.readouterr()


def test_bundled_model_answers_every_bundled_question_right(tmp_path):
    """Every question of every bundled picture, asked of the model as the demo loads it (a Hub folder)."""
    write_trained_tiny_hub_folder(tmp_path / "tiny")
    model, processor = load_for_inference(tmp_path / "tiny")
    assert len(bundled_examples()) >= 3
    images, questions, expected = bundled_questions()
    assert {question for question in questions} == {question for question, _ in QUESTIONS.values()}
    assert answer_batch(model, processor, images, questions, max_new_tokens=8) == expected


def test_demo_with_a_model_folder_and_an_image(tmp_path):
    first = run_demo(save_dir=tmp_path / "tiny", max_new_tokens=4)
    example = bundled_examples()[1]
    again = run_demo(model=tmp_path / "tiny", image=example["image"], prompt=example["questions"][1]["question"])
    assert again.answer == again.expected == example["questions"][1]["answer"]
    assert again.model_path == str(tmp_path / "tiny") and first.seconds > 0
    other = run_demo(model=tmp_path / "tiny", image=EXAMPLE_IMAGE, prompt="what shape is the large object")
    assert other.expected is None  # not a bundled picture: no known answer


def test_demo_refuses_a_missing_image(tmp_path):
    with pytest.raises(FileNotFoundError, match="no image at"):
        run_demo(image=tmp_path / "missing.png")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error shown on machines without a GPU")
def test_demo_explains_a_missing_gpu(tmp_path):
    with pytest.raises(ValueError, match="sees no CUDA GPU"):
        run_demo(save_dir=tmp_path / "tiny", device="cuda")


def test_demo_saves_the_answer_s_boxes_on_the_picture_in_its_own_frame(tmp_path, capsys, monkeypatch):
    """An answer's box on the padded square of a wide picture is drawn where it falls on the picture itself."""
    picture = tmp_path / "wide.png"
    Image.new("RGB", (100, 50), "white").save(picture)
    model_box = to_padded_square_box((0.2, 0.2, 0.8, 0.8), 100, 50)  # (0.2, 0.35, 0.8, 0.65): two decimals exact
    monkeypatch.setattr(demo, "answer", lambda *arguments: f"it is {format_box(model_box)}")

    assert main(["demo", "--image", str(picture), "--prompt", "where is it", "--save-dir", str(tmp_path / "tiny"),
                 "--save-boxes", str(tmp_path / "boxes.png")]) == 0

    assert printed_fields(capsys.readouterr().out)["boxes"] == str(tmp_path / "boxes.png")
    drawn = np.asarray(Image.open(tmp_path / "boxes.png").convert("RGB"))
    red_rows, red_columns = np.nonzero((drawn[..., 0] == 255) & (drawn[..., 1] == 0))
    assert drawn.shape[:2] == (50, 100)
    assert (red_columns.min(), red_rows.min(), red_columns.max(), red_rows.max()) == (20, 10, 80, 40)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["boxes.png", "tiny", "wide.png"]  # nothing left over


def test_demo_refuses_a_boxes_file_it_cannot_write_before_loading(tmp_path, capsys):
    assert main(["demo", "--save-boxes", str(tmp_path / "boxes"), "--save-dir", str(tmp_path / "tiny")]) == 2
    assert "picture format" in capsys.readouterr().err
    assert main(["demo", "--save-boxes", str(tmp_path / "no" / "boxes.png")]) == 2
    assert "no folder" in capsys.readouterr().err
    assert not (tmp_path / "tiny").exists()
