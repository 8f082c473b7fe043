"""A Hub folder written by the project loads with trust_remote_code in a process where the package cannot be imported."""

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers.dynamic_module_utils import get_relative_import_files

from modeling_mmfuser_llava import configuration_mmfuser_llava, modeling_mmfuser_llava
from modeling_mmfuser_llava.hub_folder import save_hub_folder

from conftest import chat
from isolated_venv import run_as_user

# What save_pretrained copies next to the weights: the config and model files and everything they import relatively.
HUB_PATHS = {
    Path(module.__file__) for module in (configuration_mmfuser_llava, modeling_mmfuser_llava)
} | {Path(path) for path in get_relative_import_files(modeling_mmfuser_llava.__file__)}
HUB_FILES = {path.name for path in HUB_PATHS}

# Runs in a fresh interpreter where the package cannot be imported (`run_as_user`): everything loads from the folder.
CHILD = textwrap.dedent(
    """
    import json
    import sys
    import torch
    from PIL import Image
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor, pipeline

    folder, inputs_file, outputs_file = sys.argv[1:4]
    inputs = load_file(inputs_file)
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    with torch.no_grad():
        logits = model(**inputs).logits
        hidden = base(**inputs).last_hidden_state
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in this image?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    processed = processor(images=Image.new("RGB", (40, 30), "red"), text=prompt, return_tensors="pt")
    pipe = pipeline("image-text-to-text", model=folder, trust_remote_code=True)
    messages[0]["content"][0]["image"] = Image.new("RGB", (40, 30), "red")
    answer = pipe(text=messages, max_new_tokens=5, generate_kwargs={"do_sample": False})
    save_file({"logits": logits, "hidden": hidden, "processed_ids": processed["input_ids"]}, outputs_file)
    print(json.dumps({
        "model_class": type(model).__module__ + "." + type(model).__name__,
        "base_class": type(base).__name__,
        "answer": answer[0]["generated_text"][-1]["content"],
    }))
    """
)


def test_hub_folder_loads_with_trust_remote_code_in_a_fresh_process(tiny, images, tmp_path):
    model, processor = tiny
    folder = save_hub_folder(model, processor, tmp_path / "repo")
    assert HUB_FILES <= {path.name for path in folder.iterdir()}
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_mmfuser_llava.MMFuserLlavaConfig",
        "AutoModel": "modeling_mmfuser_llava.MMFuserLlavaModel",
        "AutoModelForImageTextToText": "modeling_mmfuser_llava.MMFuserLlavaForConditionalGeneration",
    }
    inputs = dict(chat(processor, ["What is in this image?", "Colour?"], images[:2]))
    save_file({key: value.contiguous() for key, value in inputs.items()}, tmp_path / "inputs.safetensors")
    result = run_as_user(Path(sys.executable), ["-c", CHILD, folder, tmp_path / "inputs.safetensors", tmp_path / "out"],
                         cwd=tmp_path, timeout=300)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["model_class"].startswith("transformers_modules.")  # the folder's code, not the package's
    assert report["base_class"] == "MMFuserLlavaModel"
    outputs = load_file(tmp_path / "out")
    with torch.no_grad():
        expected = model(**inputs)
        expected_hidden = model.model(**inputs).last_hidden_state
    assert torch.equal(outputs["logits"], expected.logits)
    assert torch.equal(outputs["hidden"], expected_hidden)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in this image?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    ids = processor(images=images[0], text=prompt, return_tensors="pt")["input_ids"]
    assert torch.equal(outputs["processed_ids"], ids)  # AutoProcessor from the folder tokenizes exactly as ours
    # The pipeline's answer is our model's own greedy answer to the child's question and red image.
    red = processor(images=Image.new("RGB", (40, 30), "red"), text=prompt, return_tensors="pt")
    generated = model.generate(**red, max_new_tokens=5, do_sample=False)[0, red["input_ids"].shape[1] :]
    answer = processor.decode(generated, skip_special_tokens=True)
    assert answer and report["answer"] == answer


def test_hub_files_import_only_torch_transformers_and_each_other():
    """A Hub repo carries these files alone: anything but torch, transformers and the standard library they import
    would be missing on the user's side."""
    assert {"configuration_mmfuser_llava.py", "modeling_mmfuser_llava.py", "fuser.py"} <= HUB_FILES
    for path in HUB_PATHS:
        name = path.name
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level == 1:
                    assert f"{node.module}.py" in HUB_FILES, (name, node.module)
                    continue
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert roots <= {"torch", "transformers", "math", "re", "typing", "warnings"}, (name, roots)


def test_user_environment_hides_the_package_where_it_is_installed(tmp_path):
    """This venv has the package installed (editable): leaving PYTHONPATH out does not hide it, `run_as_user`'s
    environment does, also from the processes the child starts."""
    importable = "import importlib.util, sys; sys.exit(importlib.util.find_spec('modeling_mmfuser_llava') is None)"
    without_pythonpath = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    assert subprocess.run([sys.executable, "-c", importable], cwd=tmp_path, env=without_pythonpath).returncode == 0
    grandchild = textwrap.dedent(
        """
        import subprocess, sys
        command = "import modeling_mmfuser_llava"
        result = subprocess.run([sys.executable, "-c", command], capture_output=True, text=True)
        assert result.returncode == 1 and "ImportError" in result.stderr, result.stderr
        """
    )
    run_as_user(Path(sys.executable), ["-c", grandchild], cwd=tmp_path, timeout=120)
