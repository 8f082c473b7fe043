"""The converted processor preprocesses like CLIP ViT-L/14-336 after padding to a square; the vision tower must agree.

The original took its image processor from the vision tower's folder. If that folder's settings (size, resampling,
mean/std, ...) differ from the converted processor's, the converted model would see different pixels than the
original: an error rather than a silent change.
"""

import math
from enum import Enum
from pathlib import Path

from transformers import BaseImageProcessor, CLIPImageProcessorPil

from .errors import ConversionError

COMPARED_FIELDS = (
    "do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor", "do_normalize",
    "image_mean", "image_std",
)


def _same(left, right) -> bool:
    if isinstance(left, Enum) or isinstance(right, Enum):
        return int(left) == int(right)
    if isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)):
        return len(left) == len(right) and all(_same(a, b) for a, b in zip(left, right))
    if isinstance(left, float) or isinstance(right, float):
        return math.isclose(left, right, rel_tol=1e-6)
    return left == right


def check_vision_preprocessing(vision_folder: Path, image_processor: BaseImageProcessor) -> None:
    """Raise if `vision_folder/preprocessor_config.json` asks for other preprocessing than `image_processor` does."""
    if not (vision_folder / "preprocessor_config.json").is_file():
        return
    theirs = CLIPImageProcessorPil.from_pretrained(vision_folder).to_dict()
    ours = image_processor.to_dict()
    differing = {field: (theirs.get(field), ours.get(field)) for field in COMPARED_FIELDS
                 if not _same(theirs.get(field), ours.get(field))}
    if differing:
        raise ConversionError(
            f"the vision tower's preprocessing ({vision_folder}) differs from the converted processor's in "
            + ", ".join(f"{field}: {theirs!r} vs {ours!r}" for field, (theirs, ours) in differing.items())
        )


__all__ = ["check_vision_preprocessing"]
