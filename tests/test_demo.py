"""`mmfuser-llava demo`: builds the tiny model, writes it as a Hub folder, reloads it with trust_remote_code, answers."""

import json

import pytest
import torch

from modeling_mmfuser_llava.cli import main
from modeling_mmfuser_llava.demo import EXAMPLE_IMAGE, answer, load_for_inference, run_demo


def test_demo_writes_reloads_and_answers(tmp_path, capsys):
    assert main(["demo", "--save-dir", str(tmp_path / "tiny"), "--max-new-tokens", "4"]) == 0
    printed = capsys.readouterr().out
    assert f"model:  {tmp_path / 'tiny'}" in printed and "answer: " in printed and "time: " in printed
    config = json.loads((tmp_path / "tiny" / "config.json").read_text())
    assert config["model_type"] == "mmfuser_llava" and "AutoModelForImageTextToText" in config["auto_map"]
    # The printed answer is what the reloaded model says about the bundled image.
    from PIL import Image

    model, processor = load_for_inference(tmp_path / "tiny")
    with Image.open(EXAMPLE_IMAGE) as image:
        expected = answer(model, processor, image.convert("RGB"), "What is in this image?", max_new_tokens=4)
    assert printed.split("answer: ", 1)[1].splitlines()[0] == expected


def test_demo_with_a_model_folder_and_an_image(tmp_path):
    first = run_demo(save_dir=tmp_path / "tiny", max_new_tokens=3)
    again = run_demo(model=tmp_path / "tiny", image=EXAMPLE_IMAGE, max_new_tokens=3)
    assert again.answer == first.answer and again.model_path == str(tmp_path / "tiny")
    assert again.seconds > 0


def test_demo_refuses_a_missing_image(tmp_path):
    with pytest.raises(FileNotFoundError, match="no image at"):
        run_demo(image=tmp_path / "missing.png")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error shown on machines without a GPU")
def test_demo_explains_a_missing_gpu(tmp_path):
    with pytest.raises(ValueError, match="sees no CUDA GPU"):
        run_demo(save_dir=tmp_path / "tiny", device="cuda")
