"""bitsandbytes 4-bit and 8-bit loading quantizes only the language model, by default and through remote code.

bitsandbytes >= 0.50 runs on the CPU, so these are real quantized models: module types, footprint and generation.
"""

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import BitsAndBytesConfig
from transformers.quantizers.quantizers_utils import should_convert_module

from modeling_mmfuser_llava import MMFuserLlavaForConditionalGeneration, MMFuserLlavaModel
from modeling_mmfuser_llava.hub_folder import save_hub_folder

from conftest import linear_types
from isolated_venv import run_as_user

pytest.importorskip("bitsandbytes", reason="the `quantization` extra (bitsandbytes) is not installed")

FULL_PRECISION_PARTS = {"vision_tower", "fuser", "multi_modal_projector", "lm_head"}

# Runs in a fresh interpreter in which the package cannot be imported (`run_as_user`): the folder's code alone.
CHILD = textwrap.dedent(
    """
    import json
    import sys

    import torch
    from PIL import Image
    from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor, BitsAndBytesConfig

    folder = sys.argv[1]
    nf4 = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    loads = {
        "bf16": (AutoModelForImageTextToText, None),
        "4bit": (AutoModelForImageTextToText, nf4),
        "8bit": (AutoModelForImageTextToText, BitsAndBytesConfig(load_in_8bit=True)),
        "4bit-base": (AutoModel, BitsAndBytesConfig(load_in_4bit=True)),
    }
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is in this image"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=Image.new("RGB", (40, 30), (200, 30, 10)), text=prompt, return_tensors="pt")
    other_image = processor.image_processor(Image.new("RGB", (40, 30), (10, 30, 200)), return_tensors="pt")
    prompt_length = inputs["input_ids"].shape[1]
    continuation = None
    report = {}
    for name, (auto_class, quantization) in loads.items():
        model = auto_class.from_pretrained(
            folder, trust_remote_code=True, dtype=torch.bfloat16, quantization_config=quantization
        )
        linear_types = {}
        for module_name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):  # bitsandbytes' Linear4bit and Linear8bitLt are nn.Linear too
                part = module_name.removeprefix("model.").split(".")[0]
                linear_types.setdefault(part, set()).add(f"{type(module).__name__}:{module.weight.dtype}")
        entry = {
            "class": type(model).__module__,
            "linear_types": {part: sorted(types) for part, types in linear_types.items()},
            "footprint": model.get_memory_footprint(),
            "user_skip_modules": None if quantization is None else quantization.llm_int8_skip_modules,
            "saved_skip_modules": getattr(getattr(model.config, "quantization_config", None),
                                          "llm_int8_skip_modules", None),
        }
        if auto_class is AutoModelForImageTextToText:
            generated = model.generate(**inputs, max_new_tokens=6, do_sample=False)
            entry["generated"] = generated[0, prompt_length:].tolist()
            if continuation is None:  # bf16 loads first: its greedy text is the one every load is scored on
                continuation = generated
            # Next-token scores from the prompt's end along that text, with the image and with another image.
            for key, pixel_values in (("logits", inputs["pixel_values"]), ("other_image", other_image["pixel_values"])):
                with torch.no_grad():
                    logits = model(input_ids=continuation, pixel_values=pixel_values).logits
                entry[key] = logits[0, prompt_length - 1 : -1].float().tolist()
        report[name] = entry
    print(json.dumps(report))
    """
)


@pytest.fixture(scope="module")
def hub_folder(tiny_pristine, tmp_path_factory):
    model, processor = tiny_pristine
    return save_hub_folder(model, processor, tmp_path_factory.mktemp("quantization") / "repo")


@pytest.fixture(scope="module")
def remote_report(hub_folder):
    """Load the folder in bf16, 4-bit (NF4, double quantization) and 8-bit through remote code, in a clean process."""
    result = run_as_user(Path(sys.executable), ["-c", CHILD, hub_folder], cwd=hub_folder.parent, timeout=600)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("load", "quantized_type"), [("4bit", "Linear4bit"), ("8bit", "Linear8bitLt")])
def test_plain_config_quantizes_only_the_language_model(remote_report, load, quantized_type):
    entry = remote_report[load]
    assert entry["class"].startswith("transformers_modules.")  # the folder's code, not the package's
    types = entry["linear_types"]
    assert set(types) == FULL_PRECISION_PARTS | {"language_model"}
    assert {kind.split(":")[0] for kind in types["language_model"]} == {quantized_type}
    for part in FULL_PRECISION_PARTS:
        assert types[part] == ["Linear:torch.bfloat16"], part  # unquantized, and still in the requested dtype
    assert entry["user_skip_modules"] is None  # the user's config object is left as it was
    assert entry["saved_skip_modules"] == [
        "model.vision_tower", "model.fuser", "model.multi_modal_projector", "lm_head"
    ]


def test_base_model_keeps_its_own_module_paths(remote_report):
    """AutoModel's modules have no `model.` prefix: its default list must match them (anchored patterns)."""
    types = remote_report["4bit-base"]["linear_types"]
    assert {kind.split(":")[0] for kind in types["language_model"]} == {"Linear4bit"}
    for part in ("vision_tower", "fuser", "multi_modal_projector"):
        assert types[part] == ["Linear:torch.bfloat16"], part


# Largest logit difference to the bf16 model that quantization may cause along the bf16 model's greedy text
# (measured: NF4 0.045, 8-bit 0.006; another image changes them by 0.46; their spread over the vocabulary is 0.16).
LOGIT_TOLERANCE = {"4bit": 0.1, "8bit": 0.02}


@pytest.mark.parametrize("load", ["4bit", "8bit"])
def test_quantized_footprint_is_smaller_and_generation_works(remote_report, load):
    full, quantized = remote_report["bf16"], remote_report[load]
    assert quantized["footprint"] < full["footprint"]
    logits, reference = torch.tensor(quantized["logits"]), torch.tensor(full["logits"])
    error = (logits - reference).abs().max()
    assert error < LOGIT_TOLERANCE[load]
    # The tolerance is well below what another image changes: a model that misread the image would not pass.
    assert (torch.tensor(full["other_image"]) - reference).abs().max() > 3 * LOGIT_TOLERANCE[load]
    # Greedy generation picks by the quantized model's scores, so its first token scores within twice their error of
    # the bf16 model's best.
    assert reference[0, quantized["generated"][0]] >= reference[0].max() - 2 * error


@pytest.mark.parametrize(
    ("setting", "quantized_type"), [("load_in_4bit", "Linear4bit"), ("load_in_8bit", "Linear8bitLt")]
)
def test_plain_dict_config_quantizes_only_the_language_model(hub_folder, setting, quantized_type):
    """transformers accepts a dict for quantization_config: without a skip list it gets the default list too."""
    quantization = {setting: True}
    model = MMFuserLlavaForConditionalGeneration.from_pretrained(hub_folder, quantization_config=quantization)
    assert quantization == {setting: True}  # the user's dict is left as it was
    unquantized = dict.fromkeys(FULL_PRECISION_PARTS, {"Linear"})
    assert linear_types(model) == {"language_model": {quantized_type}, **unquantized}


@pytest.mark.parametrize("make_config", [BitsAndBytesConfig, dict], ids=["object", "dict"])
def test_explicit_skip_modules_are_used_as_given(hub_folder, make_config):
    """A user's own llm_int8_skip_modules wins, e.g. to quantize the vision tower and the fuser too."""
    quantization = make_config(load_in_4bit=True, llm_int8_skip_modules=["lm_head"])
    model = MMFuserLlavaForConditionalGeneration.from_pretrained(hub_folder, quantization_config=quantization)
    skip_modules = quantization["llm_int8_skip_modules"] if make_config is dict else quantization.llm_int8_skip_modules
    assert skip_modules == ["lm_head"]
    quantized = dict.fromkeys(["vision_tower", "fuser", "multi_modal_projector", "language_model"], {"Linear4bit"})
    assert linear_types(model) == {"lm_head": {"Linear"}, **quantized}


@pytest.mark.parametrize("model_class", [MMFuserLlavaForConditionalGeneration, MMFuserLlavaModel])
def test_default_skip_patterns_match_their_modules(tiny_pristine, model_class):
    """Every default pattern keeps a module out (bitsandbytes anchors patterns at the root), and no LM linear."""
    model = tiny_pristine[0] if model_class is MMFuserLlavaForConditionalGeneration else tiny_pristine[0].model
    patterns = list(model_class._modules_kept_unquantized)
    names = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    kept = {name for name in names if not should_convert_module(name, patterns)}
    for pattern in patterns:
        assert any(name == pattern or name.startswith(pattern + ".") for name in kept), pattern
    assert all("language_model" not in name for name in kept)
    assert {name for name in names if "language_model" not in name} == kept
