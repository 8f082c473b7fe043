"""Runs in the vLLM venv (started by `benchmarks/vllm_serving.py`): times vLLM's offline `LLM` against Transformers'
`generate` on the same prompts, and vLLM with the MMFuser block against vLLM with the single-layer baseline, in
interleaved rounds in this one process.

    python vllm_serving_measure.py JOB.json TIMINGS.json
"""

import gc
import json
import sys
from pathlib import Path

import torch
from PIL import Image
from timing import interleaved_times
from transformers import AutoModelForImageTextToText, AutoProcessor
from vllm import LLM, SamplingParams

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from vllm_worker import USER_SETTINGS  # noqa: E402

# The integration test's user settings; every round sends the same prompts, so caches would time lookups, not work.
ENGINE_SETTINGS = dict(USER_SETTINGS, enable_prefix_caching=False, mm_processor_cache_gb=0)


def vllm_generate(llm: LLM, prompts: list[dict], new_tokens: int):
    sampling = SamplingParams(temperature=0.0, max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True)
    return lambda: llm.generate(prompts, sampling, use_tqdm=False)


def transformers_generate(folder: str, texts: list[str], images: list[Image.Image], new_tokens: int, batch: int):
    """Transformers' greedy `generate` on every prompt, `batch` prompts per call (left-padded)."""
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    settings = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    inputs = [
        processor(images=images[i : i + batch], text=texts[i : i + batch], return_tensors="pt", padding=True,
                  padding_side="left")
        for i in range(0, len(texts), batch)
    ]

    def run() -> None:
        with torch.inference_mode():
            for chunk in inputs:
                model.generate(**chunk, **settings)

    return run


def main() -> None:
    job_file, timings_file = sys.argv[1:3]
    job = json.loads(open(job_file).read())
    images = [Image.open(path).convert("RGB") for path in job["images"]]
    prompts = [{"prompt": text, "multi_modal_data": {"image": image}} for text, image in zip(job["texts"], images)]
    new_tokens = job["new_tokens"]
    engines = {name: LLM(model=folder, **ENGINE_SETTINGS) for name, folder in job["folders"].items()}
    candidates = {f"vllm {name}": vllm_generate(llm, prompts, new_tokens) for name, llm in engines.items()}
    default_folder = job["folders"]["mmfuser"]
    for batch in job["transformers_batches"]:
        candidates[f"transformers batch {batch}"] = transformers_generate(
            default_folder, job["texts"], images, new_tokens, batch
        )
    timings = interleaved_times(candidates, rounds=job["rounds"], warmup=1)
    with open(timings_file, "w") as file:
        json.dump(timings.seconds, file)
    del engines
    gc.collect()


if __name__ == "__main__":  # vLLM starts its engine processes with spawn, which re-imports this module
    main()
