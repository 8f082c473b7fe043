"""(d) `generate` tokens per second of MMFuser-LLaVA against plain LLaVA-1.5 holding the same weights."""

import torch
from transformers import LlavaForConditionalGeneration

from modeling_mmfuser_llava import MMFuserLlavaForConditionalGeneration
from modeling_mmfuser_llava.conversion.upcycle import share_llava_parts

from .configs import IMAGE_TOKEN_ID, REAL, Sizes, model_configs, random_pixels, setting_name
from .fuser import fuser_inputs
from .timing import Result, interleaved_times


def generation_models(
    dtype: torch.dtype, seed: int = 0, device: str = "cpu", sizes: Sizes = REAL
) -> tuple[MMFuserLlavaForConditionalGeneration, LlavaForConditionalGeneration]:
    """MMFuser-LLaVA (CLIP-L/336, small Llama; or `sizes`') and a plain Llava sharing its tower, projector and language
    model.

    The fuser keeps its initial zero gates, so both models compute the same logits and generate the same tokens
    (checked), while the fuser still does all of its work.
    """
    mmfuser_config, llava_config = model_configs(sizes, **sizes.small_lm)
    torch.manual_seed(seed)
    mmfuser = MMFuserLlavaForConditionalGeneration(mmfuser_config)
    with torch.device("meta"):
        plain = LlavaForConditionalGeneration(llava_config)
    share_llava_parts(mmfuser, plain)
    return mmfuser.to(device, dtype).eval(), plain.to(device, dtype).eval()


def prompt_inputs(
    batch: int, dtype: torch.dtype, text_tokens: int = 40, device: str = "cpu", sizes: Sizes = REAL
) -> dict[str, torch.Tensor]:
    """A LLaVA-1.5-shaped prompt per image: text, the image tokens (576 at CLIP-L/336), a question."""
    generator = torch.Generator().manual_seed(0)
    before, after = (torch.randint(3, 32000, (batch, count), generator=generator) for count in (25, text_tokens - 25))
    image = torch.full((batch, sizes.image_tokens), IMAGE_TOKEN_ID)
    input_ids = torch.cat([torch.ones(batch, 1, dtype=torch.long), before, image, after], 1)
    pixel_values = random_pixels(batch, dtype, sizes.image_size, device)
    input_ids = input_ids.to(device)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "pixel_values": pixel_values}


def measure_generation(
    dtype: torch.dtype, rounds: int, new_tokens: int, device: str = "cpu", sizes: Sizes = REAL
) -> list[Result]:
    mmfuser, plain = generation_models(dtype, device=device, sizes=sizes)
    inputs = prompt_inputs(1, dtype, device=device, sizes=sizes)
    settings = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    query, keys_values = fuser_inputs(mmfuser.model.fuser, 1, dtype, device)
    outputs = {}

    def generate(name: str, model) -> None:
        outputs[name] = model.generate(**inputs, **settings)

    with torch.inference_mode():
        times = interleaved_times(
            {
                "mmfuser": lambda: generate("mmfuser", mmfuser),
                "plain": lambda: generate("plain", plain),
                "fuser": lambda: mmfuser.model.fuser(query, keys_values),  # runs once per generate call
            },
            rounds,
        )
    if not torch.equal(outputs["mmfuser"], outputs["plain"]):
        raise AssertionError("the two models generated different tokens: they do not hold the same weights")
    setting = setting_name(dtype, device, "batch 1", f"{new_tokens} new tokens")

    def tokens_per_second(milliseconds: float) -> str:
        return f"{new_tokens / (milliseconds / 1e3):.2f} tok/s"

    plain = tokens_per_second(times.median_ms("plain"))
    direct = times.result("", setting, "mmfuser", "plain", ">= 0.98").mapped(
        lambda ratio: 1 / ratio, "(d) generate tokens/s, MMFuser / plain Llava",
        tokens_per_second(times.median_ms("mmfuser")), plain,
    )
    derived = times.result("", setting, "fuser", "plain", ">= 0.98").mapped(
        lambda ratio: 1 / (1 + ratio), "(d) generate tokens/s, 1 / (1 + fuser / plain generate)",
        tokens_per_second(times.median_ms("plain") + times.median_ms("fuser")), plain,
    )
    return [direct, derived]
