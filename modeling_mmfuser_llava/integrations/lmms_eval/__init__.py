"""lmms-eval support: `python -m lmms_eval --model mmfuser_llava --model_args pretrained=REPO_OR_FOLDER --tasks ...`.

lmms-eval finds the model through this package's entry point in the group `lmms_eval.models` (`model_manifests`), so
nothing in lmms-eval is edited; the toy task of `mmfuser-llava experiment` ships in `TASKS_DIR`, for
`--include_path`. Install with `pip install "mmfuser-llava[eval]"`.
"""

from pathlib import Path

MODEL_NAME = "mmfuser_llava"
TASKS_DIR = Path(__file__).parent / "tasks"


def model_manifests():
    """The entry point lmms-eval calls: `mmfuser_llava` as a chat model (lmms-eval turns every task into messages)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_NAME, chat_class_path=f"{__name__}.model.MMFuserLlava")]


__all__ = ["MODEL_NAME", "TASKS_DIR", "model_manifests"]
