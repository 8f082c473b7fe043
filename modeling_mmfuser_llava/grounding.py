"""Boxes between a picture's own frame and the frame the model reads and writes them in.

LLaVA-1.5 (and so MMFuser, trained on the same data) gives boxes as `[x1, y1, x2, y2]` with two decimals, normalised to
the picture after the processor pads it to a square: the shorter side padded, the picture pasted at offset
`(long - short) // 2`. A benchmark whose ground truth is normalised by the original width and height must map the
model's boxes back first, or every non-square picture scores low. All boxes here are normalised to [0, 1].
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

Box = tuple[float, float, float, float]

_NUMBER = r"\s*(-?\d*\.?\d+)\s*"
BOX_PATTERN = re.compile(r"\[" + ",".join([_NUMBER] * 4) + r"\]")
BOX_COLOUR = "red"


def _paste_offsets(width: int, height: int) -> tuple[int, int, int]:
    """The padded square's side and where the picture sits in it, as the processor pastes it."""
    if width < 1 or height < 1:
        raise ValueError(f"a picture needs a positive width and height, got {width}x{height}")
    side = max(width, height)
    return side, (side - width) // 2, (side - height) // 2


def to_padded_square_box(box: Box, width: int, height: int) -> Box:
    """A box normalised to a `width` x `height` picture, normalised to that picture padded to a square."""
    side, left, top = _paste_offsets(width, height)
    x1, y1, x2, y2 = box
    return ((x1 * width + left) / side, (y1 * height + top) / side,
            (x2 * width + left) / side, (y2 * height + top) / side)


def from_padded_square_box(box: Box, width: int, height: int) -> Box:
    """The inverse of `to_padded_square_box`: a box on the padded square, normalised to the picture itself."""
    side, left, top = _paste_offsets(width, height)
    x1, y1, x2, y2 = box
    return ((x1 * side - left) / width, (y1 * side - top) / height,
            (x2 * side - left) / width, (y2 * side - top) / height)


@dataclass(frozen=True)
class BoxFrame:
    """The model's frame for boxes: the padded square when the processor pads, else the picture itself (a plain
    square resize stretches the picture, so normalised coordinates are unchanged)."""

    padded_square: bool

    @classmethod
    def of(cls, processor) -> BoxFrame:
        """The frame a processor (or its image processor) implies, read from its own `do_pad` setting."""
        image_processor = getattr(processor, "image_processor", processor)
        return cls(padded_square=bool(getattr(image_processor, "do_pad", False)))

    def to_model(self, box: Box, width: int, height: int) -> Box:
        return to_padded_square_box(box, width, height) if self.padded_square else tuple(box)

    def to_image(self, box: Box, width: int, height: int) -> Box:
        return from_padded_square_box(box, width, height) if self.padded_square else tuple(box)


def project_frame() -> BoxFrame:
    """The frame of the processor every checkpoint of this project ships (`processing.build_processor`), for tasks
    that see no model; the image size does not change it."""
    from .processing import build_image_processor

    return BoxFrame.of(build_image_processor(336))


def box_iou(first: Box, second: Box) -> float:
    """Intersection over union of two boxes (0 when either is empty)."""
    width = min(first[2], second[2]) - max(first[0], second[0])
    height = min(first[3], second[3]) - max(first[1], second[1])
    intersection = max(0.0, width) * max(0.0, height)
    union = ((first[2] - first[0]) * (first[3] - first[1]) + (second[2] - second[0]) * (second[3] - second[1])
             - intersection)
    return intersection / union if union > 0 else 0.0


def find_boxes(text: str) -> list[Box]:
    """Every `[x1, y1, x2, y2]` in generated text, in order (any number of decimals, spaces or none)."""
    return [tuple(float(number) for number in match.groups()) for match in BOX_PATTERN.finditer(text)]


def first_box(text: str) -> Box | None:
    """The first box in generated text, or None when it holds none."""
    match = BOX_PATTERN.search(text)
    return None if match is None else tuple(float(number) for number in match.groups())


def format_box(box: Box) -> str:
    """A box as LLaVA-1.5's training data writes it: `[0.12, 0.34, 0.56, 0.78]`."""
    return "[" + ", ".join(f"{value:.2f}" for value in box) + "]"


def draw_boxes(image: Image.Image, answer: str, frame: BoxFrame) -> Image.Image:
    """A copy of `image` with the boxes an answer (in the model's `frame`) contains drawn in the picture's frame."""
    drawn = image.convert("RGB")
    draw = ImageDraw.Draw(drawn)
    width, height = drawn.size
    line = max(1, round(max(width, height) / 200))
    for box in find_boxes(answer):
        x1, y1, x2, y2 = frame.to_image(box, width, height)
        draw.rectangle([min(x1, x2) * width, min(y1, y2) * height, max(x1, x2) * width, max(y1, y2) * height],
                       outline=BOX_COLOUR, width=line)
    return drawn


def check_picture_path(path: str | Path) -> Path:
    """`path` if PIL can write a picture there (a known extension, an existing folder), else a clear error."""
    path = Path(path)
    if path.suffix.lower() not in Image.registered_extensions():
        raise ValueError(f"cannot tell the picture format of {path}: give it an extension such as .png")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"no folder {path.parent} to save {path.name} in")
    return path


def save_boxes(image: Image.Image, answer: str, frame: BoxFrame, path: str | Path) -> Path:
    """Save `draw_boxes(image, answer, frame)` to `path` whole or not at all (written beside it, then renamed)."""
    path = check_picture_path(path)
    drawn = draw_boxes(image, answer, frame)
    handle, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(handle)
    try:
        drawn.save(staging, format=Image.registered_extensions()[path.suffix.lower()])
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return path
