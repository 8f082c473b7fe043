"""The demo's default model: the experiment's best MMFuser run, bundled in the package with a few example pictures.

Only the weights, config and processor files are bundled, not the model code: `demo.write_trained_tiny_hub_folder`
saves them again through the package, which writes the current code beside them for trust_remote_code.
"""

import json
import shutil
from pathlib import Path

from PIL import Image

from ..demo import TRAINED_TINY_EXAMPLES, TRAINED_TINY_MODEL, load_for_inference, answer_batch
from ..hub_folder import staged_output
from .task import FILES, IMAGE_DIR


# What a trained checkpoint folder holds that the demo needs; the Trainer's state and pickled arguments stay out.
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "processor_config.json",
               "chat_template.jinja", "tokenizer.json", "tokenizer_config.json")


def bundle_demo_model(checkpoint: str | Path, task_dir: str | Path, num_examples: int = 4,
                      model_dir: Path = TRAINED_TINY_MODEL, examples_dir: Path = TRAINED_TINY_EXAMPLES) -> list[dict]:
    """Copy `checkpoint`'s `MODEL_FILES` to `model_dir`, and `num_examples` test pictures of the task to
    `examples_dir` with an `examples.json` of their questions and answers.

    The pictures are among those on whose four questions the model is right, picked one by one to show as many
    different answers as possible: the demo shows what the model can do, the experiment's table how often it does.
    Returns the examples.
    """
    task_dir = Path(task_dir)
    model, processor = load_for_inference(checkpoint)
    by_image: dict[str, list[dict]] = {}
    for sample in json.loads((task_dir / FILES["test"]).read_text()):
        question = sample["conversations"][0]["value"].removeprefix("<image>\n")
        by_image.setdefault(sample["image"], []).append(
            {"question": question, "answer": sample["conversations"][1]["value"]})
    answered_right = []
    for image_name, questions in by_image.items():
        with Image.open(task_dir / IMAGE_DIR / image_name) as image:
            picture = image.convert("RGB")
        answers = answer_batch(model, processor, [picture] * len(questions), [q["question"] for q in questions])
        if answers == [q["answer"] for q in questions]:
            answered_right.append({"image": image_name, "questions": questions})
    examples, shown = [], set()
    for _ in range(min(num_examples, len(answered_right))):
        best = max(answered_right, key=lambda example: len(answer_set(example) - shown))
        answered_right.remove(best)
        examples.append(best)
        shown |= answer_set(best)
    with staged_output(model_dir, overwrite=True) as staging:
        for name in MODEL_FILES:
            shutil.copyfile(Path(checkpoint) / name, staging / name)
    with staged_output(examples_dir, overwrite=True) as staging:
        for example in examples:
            shutil.copyfile(task_dir / IMAGE_DIR / example["image"], staging / example["image"])
        (staging / "examples.json").write_text(json.dumps(examples, indent=1) + "\n")
    return examples


def answer_set(example: dict) -> set[tuple[str, str]]:
    return {(question["question"], question["answer"]) for question in example["questions"]}


__all__ = ["bundle_demo_model"]
