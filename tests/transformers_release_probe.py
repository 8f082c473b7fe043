"""What a Hub user gets from a project folder under their transformers release: run in that user's venv.

Imports only torch and transformers (and the standard library), so the same functions give the reference in the dev
venv (imported by tests/test_integration_transformers_versions.py) and the outputs in a venv of another release:

    python transformers_release_probe.py outputs FOLDER CASES.json OUT   # OUT.safetensors (logits), OUT.json (answers)
    python transformers_release_probe.py processor FOLDER OUT.json       # what loading the processor printed or warned
"""

import json
import os
import sys
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoModelForImageTextToText, AutoProcessor

MAX_NEW_TOKENS = 8


def case_outputs(folder: str | Path, cases: list[dict]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """float32 logits of each case's prompt (`{"image": path, "question": text}`) and its greedy answer, one by one."""
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    logits, answers = {}, []
    for number, case in enumerate(cases):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": case["question"]}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        with Image.open(case["image"]) as image:
            inputs = processor(images=image.convert("RGB"), text=prompt, return_tensors="pt")
        with torch.inference_mode():
            logits[f"case{number}"] = model(**inputs).logits[0].float().contiguous()
            output = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        new_tokens = output[0, inputs["input_ids"].shape[1] :]
        answers.append(processor.decode(new_tokens, skip_special_tokens=True).strip())
    return logits, answers


@contextmanager
def captured_output_and_warnings():
    """Everything written to file descriptors 1 and 2 (prints, logging handlers, prompts) and every warning raised."""
    report = {"output": "", "warnings": []}
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile(mode="w+") as capture, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        os.dup2(capture.fileno(), 1)
        os.dup2(capture.fileno(), 2)
        try:
            yield report
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            capture.seek(0)
            report["output"] = capture.read()
            report["warnings"] = [f"{warning.category.__name__}: {warning.message}" for warning in caught]


def processor_loading_report(folder: str | Path) -> dict[str, dict]:
    """What `AutoProcessor.from_pretrained(folder)` printed or warned, without and with `trust_remote_code=True`."""
    reports = {}
    for name, kwargs in {"default": {}, "trust_remote_code": {"trust_remote_code": True}}.items():
        with captured_output_and_warnings() as report:
            processor = AutoProcessor.from_pretrained(folder, **kwargs)
        reports[name] = {**report, "class": type(processor).__name__}
    return reports


def main(arguments: list[str]) -> None:
    command, folder, *rest = arguments
    if command == "outputs":
        cases_file, out = rest
        logits, answers = case_outputs(folder, json.loads(Path(cases_file).read_text()))
        save_file(logits, f"{out}.safetensors")
        Path(f"{out}.json").write_text(json.dumps(answers))
    elif command == "processor":
        (out,) = rest
        Path(out).write_text(json.dumps(processor_loading_report(folder)))
    else:
        raise SystemExit(f"unknown command {command!r}: outputs or processor")


if __name__ == "__main__":
    main(sys.argv[1:])
