"""LoRA / QLoRA: adapters on the language model only, fuser and projector saved in full, merging into a checkpoint."""

import pytest
import torch
from bitsandbytes.nn import Linear4bit, Linear8bitLt
from peft import PeftModel
from safetensors.torch import load_file
from torch import nn
from transformers import AutoProcessor

from conftest import chat
from modeling_mmfuser_llava import MMFuserLlavaForConditionalGeneration
from modeling_mmfuser_llava.cli import main as cli_main
from modeling_mmfuser_llava.training import merge_lora
from training_support import (  # noqa: F401  (fixtures)
    base_parts,
    instructions,
    losses,
    one_thread,
    tiny_checkpoint,
    train,
    training_argv,
    weights,
)

LORA = ("--lora_enable", "True", "--lora_r", "8", "--lora_alpha", "16", "--lora_dropout", "0")
NOT_ADAPTED = ("model.vision_tower.", "model.fuser.", "model.multi_modal_projector.", "lm_head")


def lora_module_names(model: PeftModel) -> list[str]:
    prefix = "base_model.model."
    return [name[len(prefix):] for name, module in model.named_modules() if hasattr(module, "lora_A")]


def logits(model, processor, images):
    with torch.no_grad():
        return model.eval()(**chat(processor, ["what is in this image"], images[:1])).logits


def test_lora_from_base_llm_adapts_the_language_model_only_and_merges(tmp_path, base_parts, instructions, images):
    llm, clip = base_parts
    output = tmp_path / "lora"
    trainer = train(*training_argv(output, llm, instructions, *LORA, "--vision_tower", str(clip), steps=3))
    model = trainer.model
    adapted = lora_module_names(model)
    assert adapted and all(name.startswith("model.language_model.layers.") for name in adapted)
    assert {name.rsplit(".", 1)[-1] for name in adapted} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    }
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in name or ".modules_to_save." in name for name in trainable)
    assert any(".fuser.modules_to_save." in name for name in trainable)
    assert any(".multi_modal_projector.modules_to_save." in name for name in trainable)
    saved = load_file(output / "adapter_model.safetensors")
    assert any("fuser" in key for key in saved) and any("multi_modal_projector" in key for key in saved)
    assert not any(part in key for key in saved for part in ("vision_tower", "lm_head"))
    # Merging rebuilds the base from the run's record (fresh fuser, grown embeddings) and folds everything in.
    merged_dir = merge_lora(output, tmp_path / "merged")
    merged = MMFuserLlavaForConditionalGeneration.from_pretrained(merged_dir)
    assert not any("lora" in key for key in weights(merged_dir))
    processor = AutoProcessor.from_pretrained(merged_dir)
    assert torch.allclose(logits(merged, processor, images), logits(model, processor, images), atol=1e-4)


@pytest.mark.parametrize(("bits", "quantized_linear"), [(4, Linear4bit), (8, Linear8bitLt)])
def test_qlora_quantizes_the_language_model_only_and_merges_from_the_cli(tmp_path, tiny_checkpoint, instructions,
                                                                         images, bits, quantized_linear):
    output = tmp_path / "qlora"
    trainer = train(*training_argv(output, tiny_checkpoint, instructions, *LORA, "--bits", str(bits),
                                   "--activation_checkpointing", "True", steps=2))
    base = trainer.model.get_base_model()
    quantized = [name for name, module in base.named_modules() if isinstance(module, quantized_linear)]
    assert quantized and all(name.startswith("model.language_model.") for name in quantized)
    language_model_linears = [name for name, module in base.named_modules() if name.startswith(
        "model.language_model.") and isinstance(module, nn.Linear) and "lora_" not in name]
    assert set(language_model_linears) == set(quantized)  # every linear layer of the LLM, adapters aside
    full_precision = [module for name, module in base.named_modules()
                      if name.startswith(NOT_ADAPTED) and isinstance(module, nn.Linear)]
    assert full_precision and not any(isinstance(module, quantized_linear) for module in full_precision)
    curve = losses(trainer)
    assert len(curve) == 2 and all(torch.isfinite(torch.tensor(curve)))  # one logged loss per step
    assert cli_main(["merge-lora", str(output), str(tmp_path / "merged")]) == 0
    merged = MMFuserLlavaForConditionalGeneration.from_pretrained(tmp_path / "merged")
    assert not any(isinstance(module, quantized_linear) for module in merged.modules())
    trained_fuser = {key.split(".model.fuser.")[1]: value  # peft saves modules_to_save under the model's own names
                     for key, value in load_file(output / "adapter_model.safetensors").items() if ".fuser." in key}
    assert set(trained_fuser) == set(merged.model.fuser.state_dict())
    assert all(torch.equal(merged.model.fuser.state_dict()[key], value) for key, value in trained_fuser.items())
    # The merged language model is the full-precision base with the trained adapters folded in: the same logits as
    # the saved adapters run unmerged on that base, and weights that the adapters did change.
    processor = AutoProcessor.from_pretrained(output)
    base = MMFuserLlavaForConditionalGeneration.from_pretrained(tiny_checkpoint)
    base_language_model = {key: value.clone() for key, value in base.model.language_model.state_dict().items()}
    adapter_model = PeftModel.from_pretrained(base, output)  # wraps `base` in place
    assert torch.allclose(logits(merged, processor, images), logits(adapter_model, processor, images), atol=1e-5)
    merged_language_model = merged.model.language_model.state_dict()
    assert set(merged_language_model) == set(base_language_model)
    assert any(not torch.equal(merged_language_model[key], value) for key, value in base_language_model.items())
