"""Runs in the vLLM venv, where neither this project nor its tests can be imported: vLLM's offline `LLM` answers
prompts with images for several Hub folders, one engine after another in this one process.

    python vllm_worker.py JOB.json ANSWERS.json

JOB.json: ``{"max_tokens": int, "logprobs": int, "models": {name: {"folder": str, "requests": [{"prompt": str,
"image": path}]}}}``. ANSWERS.json: per model, per request, the generated token ids, the text and the top
``logprobs`` log-probabilities of the first generated token (``{token id: logprob}``), and the engine's start time;
or the traceback of the model's failure.
"""

import gc
import json
import sys
import time
import traceback

from PIL import Image
from vllm import LLM, SamplingParams

# What a user of the project passes: the Transformers backend runs the folder's own model code.
USER_SETTINGS = dict(
    trust_remote_code=True,
    model_impl="transformers",
    dtype="float32",
    max_model_len=256,
    limit_mm_per_prompt={"image": 1},
    # On CPU vLLM otherwise reserves 92% of the machine's memory (`gpu_memory_utilization`) for its KV cache.
    kv_cache_memory_bytes=2**28,
    seed=0,
)
# Test speed, not what is tested: the engine in this process (no worker process to spawn and import per model; with
# VLLM_ENABLE_V1_MULTIPROCESSING=0 the engine core too), no torch.compile, no profiling run of the encoder.
ENGINE_SETTINGS = dict(USER_SETTINGS, distributed_executor_backend="uni", enforce_eager=True, skip_mm_profiling=True)


def answer_all(folder: str, requests: list[dict], max_tokens: int, logprobs: int) -> dict:
    start = time.perf_counter()
    llm = LLM(model=folder, **ENGINE_SETTINGS)
    started = time.perf_counter() - start
    prompts = []
    for request in requests:
        with Image.open(request["image"]) as image:
            prompts.append({"prompt": request["prompt"], "multi_modal_data": {"image": image.convert("RGB")}})
    sampling = SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=logprobs)
    outputs = llm.generate(prompts, sampling, use_tqdm=False)
    del llm  # shuts its engine down before the next one starts
    gc.collect()
    answers = []
    for output in outputs:
        completion = output.outputs[0]
        first = completion.logprobs[0]
        answers.append({
            "token_ids": list(completion.token_ids),
            "text": completion.text,
            "first_logprobs": {str(token): entry.logprob for token, entry in first.items()},
        })
    return {"engine_start_seconds": started, "answers": answers}


def main() -> None:
    job_file, answers_file = sys.argv[1:3]
    job = json.loads(open(job_file).read())
    results = {}
    for name, model in job["models"].items():
        try:
            results[name] = answer_all(model["folder"], model["requests"], job["max_tokens"], job["logprobs"])
        except Exception:  # one model's failure is its test's failure, with the traceback; the others still run
            results[name] = {"error": traceback.format_exc()}
    with open(answers_file, "w") as file:
        json.dump(results, file)


if __name__ == "__main__":  # vLLM starts its engine process with spawn, which re-imports this module
    main()
