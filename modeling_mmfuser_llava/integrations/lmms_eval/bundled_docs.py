"""The documents of the plugin's offline tasks: LLaVA-format records (one question, one answer) beside their pictures.

`make-synthetic-data` writes a task's `test.json` in LLaVA's training layout and its pictures in a folder; the task's
`utils.py` binds these readers to that folder, so its yaml's `!function utils.doc_to_*` read the same files as the
project's own evaluation.
"""

from pathlib import Path

from PIL import Image

IMAGE_PREFIX = "<image>\n"


class BundledDocs:
    """lmms-eval's `doc_to_*` functions for records whose pictures lie in `images`."""

    def __init__(self, images: Path):
        self.images = images

    def doc_to_visual(self, doc: dict) -> list[Image.Image]:
        with Image.open(self.images / doc["image"]) as image:
            return [image.convert("RGB")]

    def picture_size(self, doc: dict) -> tuple[int, int]:
        """Width and height of the record's picture, read from its header only."""
        with Image.open(self.images / doc["image"]) as image:
            return image.size

    @staticmethod
    def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
        return doc["conversations"][0]["value"].removeprefix(IMAGE_PREFIX)

    @staticmethod
    def doc_to_target(doc: dict) -> str:
        return doc["conversations"][1]["value"]
