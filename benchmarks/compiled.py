"""(g) the fuser compiled by torch.compile (inductor, C++ on the CPU) against eager mode, at CLIP-L/336 sizes."""

import torch

from .fuser import clip_l336_fuser, fuser_inputs
from .timing import Result, interleaved_times
from .training import fuser_forward_backward


def measure_compiled_fuser(rounds: int) -> list[Result]:
    """Inference (forward, batch 1) and training (forward + backward, batch 2, as in (f)); compilation is untimed."""
    fuser = clip_l336_fuser(torch.float32)
    compiled = torch.compile(fuser, fullgraph=True, backend="inductor")
    single, pair = fuser_inputs(fuser, 1, torch.float32), fuser_inputs(fuser, 2, torch.float32)
    results = []
    with torch.inference_mode():
        times = interleaved_times({"compiled": lambda: compiled(*single), "eager": lambda: fuser(*single)}, rounds)
    results.append(times.result("(g) fuser forward, compiled (inductor) / eager", "float32, batch 1", "compiled", "eager",
                                "report"))
    fuser.train()
    times = interleaved_times(
        {
            "compiled": lambda: fuser_forward_backward(compiled, *pair),
            "eager": lambda: fuser_forward_backward(fuser, *pair),
        },
        rounds,
    )
    results.append(times.result("(g) fuser forward+backward, compiled (inductor) / eager", "float32, batch 2",
                                "compiled", "eager", "report"))
    return results
