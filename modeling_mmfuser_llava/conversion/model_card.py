"""The model card (`README.md`) of a converted or upcycled MMFuser-LLaVA repo, built with huggingface_hub's ModelCard.

Evaluation results appear (as `model-index`) only when the user supplies them: a card never claims numbers that were
not measured on the checkpoint it describes.
"""

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

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

## Evaluation

{% if has_eval_results -%}
Results supplied with this checkpoint (also in the metadata above):

| Dataset | Metric | Value |
|---|---|---|
{% for result in eval_results -%}
| {{ result.dataset_name }} | {{ result.metric_name or result.metric_type }} | {{ result.metric_value }} |
{% endfor %}
{%- else -%}
No evaluation results were supplied for this checkpoint. The paper reports results for the authors' own models;
they are not measurements of this checkpoint.
{%- endif %}

## Citation

```bibtex
{{ citation }}
```
"""


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
    """Evaluation results from a JSON list of objects with huggingface_hub `EvalResult` fields, e.g.
    `{"task_type": "visual-question-answering", "dataset_type": "textvqa", "dataset_name": "TextVQA",
    "metric_type": "accuracy", "metric_value": 58.8}`."""
    try:
        entries = json.loads(Path(path).read_text())
        if not isinstance(entries, list):
            raise TypeError("expected a JSON list of objects")
        return [EvalResult(**entry) for entry in entries]
    except (OSError, json.JSONDecodeError, TypeError, ValueError) as error:
        raise ConversionError(f"cannot read evaluation results from {path}: {error}") from None


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
        has_eval_results=bool(info.eval_results),
        eval_results=info.eval_results,
        citation=CITATION,
    )


__all__ = ["ModelCardInfo", "build_model_card", "load_eval_results", "with_default_base_model"]
