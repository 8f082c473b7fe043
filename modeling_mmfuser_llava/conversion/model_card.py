"""The model card (`README.md`) of a converted or upcycled MMFuser-LLaVA repo, built with huggingface_hub's ModelCard.

Evaluation results appear (as `model-index`) only when the user supplies them: a card never claims numbers that were
not measured on the checkpoint it describes.
"""

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import jinja2
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..configuration_mmfuser_llava import MMFuserLlavaConfig
from .errors import ConversionError

PAPER_ARXIV_ID = "2410.11829"
PAPER_TITLE = "MMFuser: Multimodal Multi-Layer Feature Fuser for Fine-Grained Vision-Language Understanding"
CITATION = """@article{cao2024mmfuser,
  title   = {MMFuser: Multimodal Multi-Layer Feature Fuser for Fine-Grained Vision-Language Understanding},
  author  = {Cao, Yue and Liu, Yangzhou and Chen, Zhe and Shi, Guangchen and Wang, Wenhai and Zhao, Danhuai and
             Lu, Tong},
  journal = {arXiv preprint arXiv:2410.11829},
  year    = {2024}
}"""
# The data of LLaVA-1.5's two stages (LCS-558K captions; the mix665k instructions live in LLaVA-Instruct-150K).
LLAVA_15_DATASETS = ("liuhaotian/LLaVA-Pretrain", "liuhaotian/LLaVA-Instruct-150K")
# Vicuna v1.5, the language model of LLaVA-1.5, is a Llama 2 fine-tune.
DEFAULT_LICENSE = "llama2"

TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

MMFuser-LLaVA: LLaVA-1.5 whose projector sees the penultimate CLIP layer enriched with shallower layers through
deformable cross-attention ([MMFuser, arXiv:{{ arxiv_id }}](https://arxiv.org/abs/{{ arxiv_id }})).

{{ provenance }}
{% if space_id %}
Try it in the browser: [a chat page about your picture](https://huggingface.co/spaces/{{ space_id }}) (written by
`mmfuser-llava web --write-space`).
{% endif %}
- Vision layers: query `{{ query_layer }}`, keys/values `{{ key_value_layers }}` (indices into the vision tower's
  hidden states)
- Weights: `{{ dtype }}` safetensors, native transformers key layout
- Prompt format: `vicuna_v1` (the processor's chat template); images are padded to a square in the CLIP mean colour

## Usage

The model code ships with the weights, so loading needs `trust_remote_code=True`:

```python
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

repo = "{{ repo_id }}"
model = AutoModelForImageTextToText.from_pretrained(
    repo, trust_remote_code=True, dtype=torch.float16, device_map="auto"
)
processor = AutoProcessor.from_pretrained(repo)

messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in this image?"}]}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(images=Image.open("image.jpg"), text=prompt, return_tensors="pt").to(model.device, torch.float16)
output = model.generate(**inputs, max_new_tokens=64, do_sample=False)
print(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

4-bit loading (bitsandbytes):

```python
from transformers import BitsAndBytesConfig

model = AutoModelForImageTextToText.from_pretrained(
    repo, trust_remote_code=True, device_map="auto",
    quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float16
    ),
)
```

{{ evaluation_section }}

## Citation

```bibtex
{{ citation }}
```
"""


EVALUATION_HEADING = "## Evaluation"
EVALUATION_TEMPLATE = """## Evaluation

{% if eval_results -%}
Results supplied with this checkpoint (also in the metadata above):

| Dataset | Metric | Value | Source |
|---|---|---|---|
{% for result in eval_results -%}
| {{ result.dataset_name }} | {{ result.metric_name or result.metric_type }} | {{ result.metric_value }} | \
{{ result.source_name or "supplied by the user" }} |
{% endfor %}
{%- else -%}
No evaluation results were supplied for this checkpoint. The paper reports results for the authors' own models;
they are not measurements of this checkpoint.
{%- endif %}"""


@dataclass
class ModelCardInfo:
    """What the user tells the card: repo id, license, base models, datasets, evaluation results."""

    repo_id: str | None = None
    license: str = DEFAULT_LICENSE
    base_models: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=lambda: list(LLAVA_15_DATASETS))
    eval_results: list[EvalResult] = field(default_factory=list)
    space_id: str | None = None  # a Space serving this model (`mmfuser-llava web --write-space`), linked from the card


def with_default_base_model(card: ModelCardInfo | None, name: str | Path) -> ModelCardInfo:
    """`card` (or the default card) with `name` as its base model if the user named none and `name` is a Hub id."""
    card = card or ModelCardInfo()
    if card.base_models or Path(name).expanduser().exists():
        return card
    return replace(card, base_models=[str(name)])


def load_eval_results(path: str | Path) -> list[EvalResult]:
    """Evaluation results from lmms-eval's output (its `--output_path` folder or a `*_results.json` in it), or from a
    JSON list of objects with huggingface_hub `EvalResult` fields, e.g.
    `{"task_type": "visual-question-answering", "dataset_type": "textvqa", "dataset_name": "TextVQA",
    "metric_type": "accuracy", "metric_value": 58.8}`."""
    from ..integrations.lmms_eval.results import LmmsEvalResultsError, is_lmms_eval_results, read_lmms_eval_results

    if is_lmms_eval_results(path):
        try:
            return read_lmms_eval_results(path)
        except LmmsEvalResultsError as error:
            raise ConversionError(str(error)) from None
    try:
        entries = json.loads(Path(path).read_text())
        if not isinstance(entries, list):
            raise TypeError("expected a JSON list of objects, or lmms-eval's results folder")
        return [EvalResult(**entry) for entry in entries]
    except (OSError, json.JSONDecodeError, TypeError, ValueError) as error:
        raise ConversionError(f"cannot read evaluation results from {path}: {error}") from None


def evaluation_section(eval_results: list[EvalResult]) -> str:
    """The card's "Evaluation" section: a table of `eval_results`, or the statement that none were supplied."""
    return jinja2.Template(EVALUATION_TEMPLATE).render(eval_results=eval_results)


def build_model_card(info: ModelCardInfo, config: MMFuserLlavaConfig, provenance: str, fallback_name: str) -> ModelCard:
    """The card of a repo holding a model with `config`; `provenance` says where the weights come from."""
    model_name = (info.repo_id or fallback_name).split("/")[-1]
    card_data = ModelCardData(
        license=info.license,
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        base_model=info.base_models or None,
        datasets=info.datasets or None,
        tags=["mmfuser", "llava", "vision-language", "custom_code", f"arxiv:{PAPER_ARXIV_ID}"],
        model_name=model_name,
        eval_results=info.eval_results or None,
    )
    return ModelCard.from_template(
        card_data,
        template_str=TEMPLATE,
        model_name=model_name,
        repo_id=info.repo_id or f"path/to/{fallback_name}",
        arxiv_id=PAPER_ARXIV_ID,
        provenance=provenance,
        query_layer=config.vision_feature_layer,
        key_value_layers=list(config.fuser_key_value_layers),
        dtype=config.dtype,
        space_id=info.space_id,
        evaluation_section=evaluation_section(info.eval_results),
        citation=CITATION,
    )


def refresh_eval_results(folder: str | Path, eval_results: list[EvalResult]) -> Path:
    """Put `eval_results` into the card (`README.md`) of the model folder `folder`: its `model-index` and its
    Evaluation section. A result replaces the card's result of the same benchmark, metric and filter; the card's
    other results and the rest of its text stay. A folder without a card gets a new one from its config."""
    folder = Path(folder)
    card_path = folder / "README.md"
    if card_path.is_file():
        card = ModelCard.load(card_path)
    elif (folder / "config.json").is_file():
        config = MMFuserLlavaConfig.from_pretrained(folder)
        card = build_model_card(ModelCardInfo(), config, f"Weights from `{folder.name}`.", folder.name)
    else:
        raise ConversionError(f"{folder} holds no model card (README.md) and no config.json: not a model folder")
    updated = {_result_key(result) for result in eval_results}
    kept = [result for result in card.data.eval_results or [] if _result_key(result) not in updated]
    card.data.eval_results = [*kept, *eval_results]
    card.data.model_name = card.data.model_name or folder.name
    heading = card.text.find(EVALUATION_HEADING)
    section = evaluation_section(card.data.eval_results)
    if heading < 0:
        card.text = f"{card.text.rstrip()}\n\n{section}\n"
    else:
        following = card.text.find("\n## ", heading + len(EVALUATION_HEADING))
        rest = "" if following < 0 else card.text[following:]
        card.text = f"{card.text[:heading]}{section}\n{rest}"
    staged = card_path.with_name("README.md.partial")
    try:
        card.save(staged)
        os.replace(staged, card_path)
    finally:
        staged.unlink(missing_ok=True)
    return card_path


def _result_key(result: EvalResult) -> tuple:
    return result.dataset_type, result.dataset_config, result.dataset_split, result.metric_type, result.metric_config


__all__ = [
    "ModelCardInfo",
    "build_model_card",
    "evaluation_section",
    "load_eval_results",
    "refresh_eval_results",
    "with_default_base_model",
]
