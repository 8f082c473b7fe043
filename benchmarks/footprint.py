"""(e) memory footprint of 4-bit (NF4, double quantization) and 8-bit loading against bfloat16, mid-size model."""

import gc
import tempfile

import torch
from transformers import BitsAndBytesConfig

from modeling_mmfuser_llava import MMFuserLlavaForConditionalGeneration

from .configs import MID_SIZE_LM, model_configs
from .timing import Result

QUANTIZATIONS = {
    "4-bit NF4 + double quantization": BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    ),
    "8-bit": BitsAndBytesConfig(load_in_8bit=True),
}


def language_model_bytes(model: MMFuserLlavaForConditionalGeneration) -> int:
    """Bytes of the language model's parameters and buffers (quantized weights as stored)."""
    tensors = [*model.model.language_model.parameters(), *model.model.language_model.buffers()]
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def measure_footprints() -> list[Result]:
    """Save a random bf16 checkpoint of CLIP-L/336 + fuser + mid-size Llama, load it three ways, compare footprints.

    `get_memory_footprint` counts parameters and buffers; bitsandbytes' per-block scales live outside them
    (about 1-3% more for 4-bit), so the quantized numbers are slight underestimates.
    """
    config, _ = model_configs(**MID_SIZE_LM)
    torch.manual_seed(0)
    model = MMFuserLlavaForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    billions = model.num_parameters() / 1e9, model.model.language_model.num_parameters() / 1e9
    size = "{:.2f}B parameters, {:.2f}B in the language model".format(*billions)
    gib = 2**30
    results = []
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        full = (model.get_memory_footprint(), language_model_bytes(model))
        del model
        gc.collect()
        for name, quantization in QUANTIZATIONS.items():
            quantized = MMFuserLlavaForConditionalGeneration.from_pretrained(
                folder, dtype=torch.bfloat16, quantization_config=quantization
            )
            footprint = (quantized.get_memory_footprint(), language_model_bytes(quantized))
            del quantized
            gc.collect()
            for part, ours, baseline in zip(("whole model", "language model"), footprint, full):
                results.append(
                    Result(
                        f"(e) footprint, {name} / bfloat16", f"{part} ({size})", f"{ours / gib:.2f} GiB",
                        f"{baseline / gib:.2f} GiB", ours / baseline, target="report",
                    )
                )
    return results
