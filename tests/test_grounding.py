"""Boxes between the picture's frame and the model's: the processor's own padding, pixel for pixel."""

import json

import numpy as np
import pytest
from PIL import Image

from modeling_mmfuser_llava.demo import TRAINED_TINY_MODEL
from modeling_mmfuser_llava.experiment.evaluation import MAX_BOX_TOKENS, answers_by_id, grounding_precision
from modeling_mmfuser_llava.grounding import (
    BoxFrame,
    draw_boxes,
    find_boxes,
    first_box,
    box_iou,
    format_box,
    from_padded_square_box,
    project_frame,
    to_padded_square_box,
)
from modeling_mmfuser_llava.integrations.lmms_eval import TASKS_DIR
from modeling_mmfuser_llava.processing import build_image_processor
from modeling_mmfuser_llava.training.synthetic import COLOURS, GROUNDING_QUESTION, IMAGE_DIR, make_synthetic_dataset

# Wider and taller than square, odd differences (the integer paste offset rounds down), and a square.
SIZES = [(64, 37), (37, 64), (50, 21), (21, 50), (40, 40)]


def pixel_box(box, width, height):
    x1, y1, x2, y2 = box
    return x1 / width, y1 / height, x2 / width, y2 / height


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_the_padded_square_box_covers_the_pixels_the_processor_pasted(width, height):
    """A white rectangle on a black picture, padded by the project's own processor (no resize): the box mapped to the
    padded square covers exactly the white pixels there."""
    x1, y1, x2, y2 = 3, 5, width - 7, height - 4
    picture = np.zeros((height, width, 3), dtype=np.uint8)
    picture[y1:y2, x1:x2] = 255
    processor = build_image_processor(max(width, height))
    padded = np.asarray(processor.pad_to_square(np.moveaxis(picture, -1, 0), background_color=(0, 0, 0)))
    side = padded.shape[-1]
    rows, columns = np.nonzero(padded[0] == 255)

    box = to_padded_square_box(pixel_box((x1, y1, x2, y2), width, height), width, height)

    assert np.multiply(box, side) == pytest.approx((columns.min(), rows.min(), columns.max() + 1, rows.max() + 1))


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_the_round_trip_gives_the_box_back(width, height):
    box = pixel_box((1, 2, width - 3, height - 1), width, height)
    assert from_padded_square_box(to_padded_square_box(box, width, height), width, height) == pytest.approx(
        box, abs=1e-12)
    assert to_padded_square_box(from_padded_square_box(box, width, height), width, height) == pytest.approx(
        box, abs=1e-12)


def test_the_picture_fills_the_longer_side_and_is_centred_on_the_shorter():
    assert to_padded_square_box((0, 0, 1, 1), 200, 100) == (0, 0.25, 1, 0.75)
    assert to_padded_square_box((0, 0, 1, 1), 100, 200) == (0.25, 0, 0.75, 1)
    assert to_padded_square_box((0, 0, 1, 1), 5, 2) == (0, 0.2, 1, 0.6)  # offset (5 - 2) // 2 = 1


def test_a_picture_without_pixels_is_refused():
    with pytest.raises(ValueError, match="positive width and height"):
        to_padded_square_box((0, 0, 1, 1), 0, 10)


def test_the_frame_comes_from_the_processor_settings():
    padding = build_image_processor(32)
    resizing = build_image_processor(32)
    resizing.do_pad = False
    box = (0.1, 0.2, 0.3, 0.4)

    assert BoxFrame.of(padding) == BoxFrame(padded_square=True)
    assert BoxFrame.of(padding).to_model(box, 200, 100) == to_padded_square_box(box, 200, 100)
    assert BoxFrame.of(padding).to_image(box, 200, 100) == from_padded_square_box(box, 200, 100)
    assert BoxFrame.of(resizing) == BoxFrame(padded_square=False)
    assert BoxFrame.of(resizing).to_model(box, 200, 100) == box
    assert BoxFrame.of(resizing).to_image(box, 200, 100) == box


def test_the_frame_of_a_whole_processor_is_its_image_processor_s():
    class Processor:
        image_processor = build_image_processor(32)

    assert BoxFrame.of(Processor()).padded_square


@pytest.mark.parametrize("text", [
    "[0.12, 0.34, 0.56, 0.78]",
    "The region is [0.12,0.34,0.56,0.78].",
    "[ 0.120 , 0.3400, 0.56 , 0.78 ] and then [0.9, 0.9, 1.0, 1.0]",
    "Sure: [.12, 0.34, 0.56, 0.78]",
])
def test_the_first_box_is_found_in_the_formats_llava_writes(text):
    assert first_box(text) == (0.12, 0.34, 0.56, 0.78)


def test_text_without_a_box_has_none():
    assert first_box("a red cross [0.1, 0.2, 0.3]") is None
    assert find_boxes("no box here") == []


def test_every_box_is_found_in_order():
    assert find_boxes("[0.1, 0.2, 0.3, 0.4] or [0.5,0.6,0.7,0.8]") == [(0.1, 0.2, 0.3, 0.4), (0.5, 0.6, 0.7, 0.8)]


def test_boxes_are_written_with_two_decimals():
    assert format_box((0.1, 0.23456, 0.999, 1)) == "[0.10, 0.23, 1.00, 1.00]"
    assert first_box(format_box((0.1, 0.23456, 0.999, 1))) == (0.1, 0.23, 1.0, 1.0)


def test_drawn_boxes_sit_on_the_picture_s_own_pixels():
    """A box the model gives on the padded square of a wide picture is drawn where it falls on the picture."""
    picture = Image.new("RGB", (200, 100), "white")
    model_box = to_padded_square_box((0.25, 0.2, 0.75, 0.8), 200, 100)

    drawn = np.asarray(draw_boxes(picture, f"it is {format_box(model_box)}", BoxFrame(padded_square=True)))
    red = np.nonzero((drawn[..., 0] == 255) & (drawn[..., 1] == 0))

    assert (red[1].min(), red[0].min(), red[1].max(), red[0].max()) == (50, 20, 150, 80)
    assert np.asarray(picture).min() == 255  # the picture itself is left as it was


def test_the_synthetic_grounding_answers_are_the_shape_s_box_on_the_padded_square(tmp_path):
    """`make-synthetic-data --kind grounding`: non-square pictures, LLaVA-1.5's question, and an answer that, mapped
    back from the padded square, encloses exactly the pixels of the shape the question names."""
    data = json.loads(make_synthetic_dataset(tmp_path / "grounding", num_samples=12, seed=3, kind="grounding")
                      .read_text())

    assert len(data) == 12
    for sample in data:
        question, answer = (turn["value"] for turn in sample["conversations"])
        assert question.startswith(f"<image>\n{GROUNDING_QUESTION}the ")
        colour = question.removeprefix(f"<image>\n{GROUNDING_QUESTION}the ").split()[0]
        with Image.open(tmp_path / "grounding" / IMAGE_DIR / sample["image"]) as image:
            pixels = np.asarray(image.convert("RGB"))
        height, width = pixels.shape[:2]
        assert max(width, height) >= 1.5 * min(width, height)
        rows, columns = np.nonzero((pixels == COLOURS[colour]).all(axis=-1))
        x1, y1, x2, y2 = from_padded_square_box(first_box(answer), width, height)
        # Two decimals on the padded square are within half a hundredth of its side.
        tolerance = 0.005 * max(width, height) + 1e-9
        assert (x1 * width, y1 * height, x2 * width, y2 * height) == pytest.approx(
            (columns.min(), rows.min(), columns.max() + 1, rows.max() + 1), abs=tolerance)


def test_an_unknown_synthetic_kind_is_refused(tmp_path):
    with pytest.raises(ValueError, match="grounding"):
        make_synthetic_dataset(tmp_path / "x", kind="boxes")
    assert not (tmp_path / "x").exists()


def test_the_toy_grounding_precision_maps_the_model_s_frame_back():
    """The bundled `mmfuser_grounding` questions answered with their references score 1 read in the project's frame;
    read as if the model's boxes were on the picture itself (no conversion), most miss; no box is a miss."""
    task_dir = TASKS_DIR / "mmfuser_grounding"
    samples = json.loads((task_dir / "test.json").read_text())
    references = {sample["id"]: sample["conversations"][1]["value"] for sample in samples}

    assert project_frame() == BoxFrame(padded_square=True)
    assert grounding_precision(task_dir, references, project_frame()) == 1
    assert grounding_precision(task_dir, references, BoxFrame(padded_square=False)) < 0.5
    assert grounding_precision(task_dir, dict.fromkeys(references, "red"), project_frame()) == 0


def test_the_bundled_model_grounds_in_its_own_frame():
    """The bundled tiny model, trained with the experiment's grounding variant, boxes the `mmfuser_grounding`
    questions in the padded square: its answers mapped back score well above the same answers read on the picture
    itself, so an evaluation that skips the frame conversion under-scores it."""
    task_dir = TASKS_DIR / "mmfuser_grounding"
    answers = answers_by_id(TRAINED_TINY_MODEL, task_dir, max_new_tokens=MAX_BOX_TOKENS)

    converted = grounding_precision(task_dir, answers, project_frame())
    unconverted = grounding_precision(task_dir, answers, BoxFrame(padded_square=False))
    assert all(first_box(answer) is not None for answer in answers.values())
    assert converted >= unconverted + 0.2, (converted, unconverted)


def test_box_overlap():
    assert box_iou((0, 0, 0.5, 0.5), (0, 0, 0.5, 0.5)) == 1
    assert box_iou((0, 0, 0.5, 0.5), (0.25, 0, 0.75, 0.5)) == pytest.approx(1 / 3)
    assert box_iou((0, 0, 0.1, 0.1), (0.5, 0.5, 1, 1)) == 0
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0
