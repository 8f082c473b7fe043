"""A Hugging Face Space folder that serves `mmfuser-llava web` for one model (`mmfuser-llava web --write-space`).

The Space runs without this package: it carries the page (`web.py`) and the modules it imports from this package
(`carried_modules`: its loading code, its box drawing) as a small package beside `app.py`, as a Hub model repo
carries its modeling files; the model's own code comes with its weights (trust_remote_code). `requirements.txt` is
this package's own dependencies and its `[web]` extra, read from its installed metadata, so the Space gets the tested
ranges.
"""

import ast
import shutil
from importlib import metadata
from pathlib import Path

import gradio
from huggingface_hub import SpaceCard, SpaceCardData
from packaging.requirements import Requirement

from .demo import EXAMPLE_IMAGE
from .hub_folder import staged_output

DISTRIBUTION = "mmfuser-llava"
SPACE_PACKAGE = "mmfuser_llava_web"
PAGE_MODULE = "web.py"

APP = '''"""The MMFuser-LLaVA chat page for {model}, written by `mmfuser-llava web --write-space`."""

import torch

from {package}.web import WebDemoError, serve

MODEL = {model!r}

if __name__ == "__main__":
    try:
        # host and port None: Gradio's environment, which a Space sets (0.0.0.0:7860).
        serve(MODEL, host=None, port=None, device="cuda" if torch.cuda.is_available() else "cpu",
              load_in_4bit={load_in_4bit!r})
    except WebDemoError as error:
        raise SystemExit(f"error: {{error}}") from None
'''

README = """---
{{ card_data }}
---

# MMFuser-LLaVA: {{ model }}

A chat page about a picture for [{{ model }}](https://huggingface.co/{{ model }}), an MMFuser-LLaVA
([arXiv:2410.11829](https://arxiv.org/abs/2410.11829)). Upload or pick a picture, ask, follow up; the answer streams
in. The same model answers through the API:

```python
from gradio_client import Client, handle_file

Client("{{ space_id }}").predict(handle_file("picture.png"), "What is in this image?", api_name="/chat")
```

Written by `mmfuser-llava web --write-space DIR --model {{ model }}`.
"""


def space_requirements(load_in_4bit: bool = False) -> list[str]:
    """This package's dependencies and its `[web]` extra (and `[quantization]` for 4 bits), from its metadata."""
    extras = ("web", "quantization") if load_in_4bit else ("web",)
    requirements = []
    for line in metadata.requires(DISTRIBUTION) or []:
        requirement = Requirement(line)
        marker = requirement.marker
        if marker is None or any(marker.evaluate({"extra": extra}) for extra in extras):
            requirement.marker = None
            requirements.append(str(requirement))
    return requirements


def carried_modules(package_dir: Path, start: str = PAGE_MODULE) -> list[str]:
    """`start` and every module of `package_dir` it reaches through module-level relative imports: what the Space
    must carry (imports inside functions serve this package's own commands, such as building the tiny model)."""
    carried, pending = set(), [start]
    while pending:
        module = pending.pop()
        if module in carried:
            continue
        carried.add(module)
        tree = ast.parse((package_dir / module).read_text(), filename=module)
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module is None or "." in node.module:  # the Space's package is one flat folder
                    raise ValueError(f"{module}: a carried module imports its siblings as `from .name import ...`")
                pending.append(f"{node.module}.py")
    return sorted(carried)


def write_space(
    output_dir: str | Path, model: str, load_in_4bit: bool = False, overwrite: bool = False, space_id: str | None = None
) -> Path:
    """Write the Space folder for `model` (a Hub id) into `output_dir`, all or nothing."""
    package_dir = Path(__file__).parent
    card_data = SpaceCardData(
        title=f"MMFuser-LLaVA {model.split('/')[-1]}"[:60],
        sdk="gradio",
        sdk_version=gradio.__version__,
        app_file="app.py",
        models=[model],
        license="apache-2.0",
        short_description="Chat about a picture with an MMFuser-LLaVA model",
        emoji="🔍",
        colorFrom="blue",
        colorTo="indigo",
        pinned=False,
    )
    card = SpaceCard.from_template(
        card_data, template_str=README, model=model, space_id=space_id or f"your-name/{model.split('/')[-1]}-chat"
    )
    with staged_output(output_dir, overwrite) as staging:
        (staging / "app.py").write_text(APP.format(model=model, package=SPACE_PACKAGE, load_in_4bit=load_in_4bit))
        (staging / "requirements.txt").write_text("\n".join(space_requirements(load_in_4bit)) + "\n")
        card.save(staging / "README.md")
        package = staging / SPACE_PACKAGE
        package.mkdir()
        (package / "__init__.py").write_text('"""The page of `mmfuser-llava web`, carried by this Space."""\n')
        for module in carried_modules(package_dir):
            shutil.copyfile(package_dir / module, package / module)
        (package / "assets").mkdir()
        shutil.copyfile(EXAMPLE_IMAGE, package / "assets" / EXAMPLE_IMAGE.name)  # the page's example
    return Path(output_dir)


__all__ = ["carried_modules", "space_requirements", "write_space"]
