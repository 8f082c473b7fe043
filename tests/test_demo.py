"""`mmfuser-llava demo`: writes the bundled trained tiny model as a Hub folder, reloads it with trust_remote_code, and
answers about the bundled example pictures: correctly."""

import json

import pytest
import torch
from PIL import Image

from modeling_mmfuser_llava.cli import main
from modeling_mmfuser_llava.demo import (
    EXAMPLE_IMAGE,
    answer_batch,
    bundled_examples,
    load_for_inference,
    run_demo,
    write_trained_tiny_hub_folder,
)
from modeling_mmfuser_llava.experiment.task import QUESTIONS


def test_demo_writes_reloads_and_answers_right(tmp_path, capsys):
    assert main(["demo", "--save-dir", str(tmp_path / "tiny")]) == 0
    printed = capsys.readouterr().out
    assert f"model:  {tmp_path / 'tiny'}" in printed and "time: " in printed
    config = json.loads((tmp_path / "tiny" / "config.json").read_text())
    assert config["model_type"] == "mmfuser_llava" and "AutoModelForImageTextToText" in config["auto_map"]
    assert (tmp_path / "tiny" / "modeling_mmfuser_llava.py").is_file()  # the code travels with the weights
    answer_line = printed.split("answer: ", 1)[1].splitlines()[0]
    right = printed.split("right answer: ", 1)[1].splitlines()[0]
    assert answer_line == right == bundled_examples()[0]["questions"][0]["answer"]


def test_bundled_model_answers_every_bundled_question_right(tmp_path):
    """Every question of every bundled picture, asked of the model as the demo loads it (a Hub folder)."""
    write_trained_tiny_hub_folder(tmp_path / "tiny")
    model, processor = load_for_inference(tmp_path / "tiny")
    examples = bundled_examples()
    assert len(examples) >= 3
    images, questions, expected = [], [], []
    for example in examples:
        with Image.open(example["image"]) as image:
            picture = image.convert("RGB")
        for question in example["questions"]:
            images.append(picture)
            questions.append(question["question"])
            expected.append(question["answer"])
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
