"""(c) the vision path (tower, fuser, projector) of MMFuser-LLaVA against plain LLaVA-1.5's (tower, projector)."""

import torch
from transformers import AutoModel, LlavaModel
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from modeling_mmfuser_llava import MMFuserLlavaModel

from .configs import REAL, Sizes, model_configs, random_pixels, setting_name
from .fuser import clip_l336_fuser
from .timing import Result, call_times, interleaved_times


def vision_paths(
    dtype: torch.dtype, seed: int = 0, device: str = "cpu", sizes: Sizes = REAL
) -> tuple[MMFuserLlavaModel, LlavaModel]:
    """Both models over the same CLIP-L/336 tower and LLaVA-1.5-7B projector (1024 -> 4096 -> 4096), or `sizes`'.

    They are built on the meta device and given real modules for what `get_image_features` uses: no language model.
    """
    mmfuser_config, llava_config = model_configs(sizes, **sizes.projector_lm)
    torch.manual_seed(seed)
    vision_tower = AutoModel.from_config(mmfuser_config.vision_config)
    projector = LlavaMultiModalProjector(mmfuser_config)
    with torch.device("meta"):
        mmfuser, plain = MMFuserLlavaModel(mmfuser_config), LlavaModel(llava_config)
    fuser = clip_l336_fuser(dtype, seed, sizes)
    mmfuser.vision_tower, mmfuser.fuser, mmfuser.multi_modal_projector = vision_tower, fuser, projector
    plain.vision_tower, plain.multi_modal_projector = vision_tower, projector
    for model in (mmfuser, plain):
        del model.language_model  # still on the meta device; get_image_features never calls it
    return mmfuser.to(device, dtype).eval(), plain.to(device, dtype).eval()


def measure_vision_path(
    dtype: torch.dtype, batch: int, rounds: int, device: str = "cpu", sizes: Sizes = REAL
) -> list[Result]:
    """The direct ratio, and 1 + fuser / plain path with the fuser timed in place, inside the same calls (on a noisy
    machine this resolves a few percent far better than the difference of two long calls)."""
    mmfuser, plain = vision_paths(dtype, device=device, sizes=sizes)
    pixels = random_pixels(batch, dtype, sizes.image_size, device)
    warmup = 1
    with call_times(mmfuser.fuser) as fuser_calls, torch.inference_mode():
        times = interleaved_times(
            {"mmfuser": lambda: mmfuser.get_image_features(pixels), "plain": lambda: plain.get_image_features(pixels)},
            rounds, warmup,
        )
    times.add_series("fuser", {clock: series[warmup:] for clock, series in fuser_calls.items()})
    setting = setting_name(dtype, device, f"batch {batch}")
    derived = times.result("", setting, "fuser", "plain").mapped(
        lambda ratio: 1 + ratio, "(c) vision path, 1 + fuser timed in place / plain path (explains the direct ratio)",
        f"{times.median_ms('plain') + times.median_ms('fuser'):.0f} ms", f"{times.median_ms('plain'):.0f} ms",
    )
    return [
        times.result("(c) vision path with fuser / without (plain Llava), direct", setting, "mmfuser", "plain",
                     "<= 1.04"),
        times.result("(c) the same, user-mode CPU time (leaves out the kernel's page faults)", setting, "mmfuser",
                     "plain", cpu_clock="user"),
        derived,
    ]
