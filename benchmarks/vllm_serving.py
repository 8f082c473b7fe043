"""Serving throughput of the bundled trained tiny model: vLLM's offline `LLM` against Transformers' `generate`, and the
fuser's cost under vLLM (the MMFuser block against `fuser_fusion="none"`, the same weights otherwise).

    .venv/bin/python -m benchmarks.vllm_serving [--rounds 3] [--new-tokens 16]

The measurement runs in the vLLM venv of the integration test (built and cached on first use): vLLM's own pinned
transformers, this package not importable, both engines and Transformers timed in interleaved rounds in one process.
"""

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageOps

from modeling_mmfuser_llava.demo import TRAINED_TINY_MODEL, bundled_examples, write_trained_tiny_hub_folder
from modeling_mmfuser_llava.hub_folder import save_hub_folder

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))
from isolated_venv import run_as_user  # noqa: E402  (the tests' venv helper: one vLLM venv for both)
from test_integration_vllm import vllm_venv  # noqa: E402

MEASURE = Path(__file__).with_name("vllm_serving_measure.py")
PROMPTS = 64
TRANSFORMERS_BATCHES = (1, PROMPTS)
# Four views of each bundled picture make 64 distinct (question, image) prompts from the 16 bundled questions.
VIEWS = (lambda image: image, ImageOps.mirror, ImageOps.flip, lambda image: image.rotate(90))


def write_folders(root: Path) -> dict[str, Path]:
    """The bundled model as a Hub folder, and the same weights with the single-layer baseline instead of its fuser."""
    from transformers import AutoProcessor

    from modeling_mmfuser_llava import MMFuserLlavaForConditionalGeneration

    baseline = MMFuserLlavaForConditionalGeneration.from_pretrained(TRAINED_TINY_MODEL, fuser_fusion="none")
    return {
        "mmfuser": write_trained_tiny_hub_folder(root / "mmfuser"),
        "none": save_hub_folder(baseline, AutoProcessor.from_pretrained(TRAINED_TINY_MODEL), root / "none"),
    }


def write_prompts(root: Path) -> tuple[list[str], list[str]]:
    """64 chat prompts and the paths of their pictures."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(TRAINED_TINY_MODEL)
    texts, images = [], []
    for view_index, view in enumerate(VIEWS):
        for example in bundled_examples():
            with Image.open(example["image"]) as opened:
                path = root / f"view{view_index}-{example['image'].name}"
                view(opened.convert("RGB")).save(path)
            for question in example["questions"]:
                content = [{"type": "image"}, {"type": "text", "text": question["question"]}]
                messages = [{"role": "user", "content": content}]
                texts.append(processor.apply_chat_template(messages, add_generation_prompt=True))
                images.append(str(path))
    return texts, images


def measure(rounds: int, new_tokens: int) -> dict[str, list[float]]:
    """Wall seconds of each candidate per round, measured in the vLLM venv."""
    python = vllm_venv()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        texts, images = write_prompts(root)
        assert len(texts) == PROMPTS
        job = {
            "folders": {name: str(path) for name, path in write_folders(root).items()},
            "texts": texts,
            "images": images,
            "new_tokens": new_tokens,
            "rounds": rounds,
            "transformers_batches": list(TRANSFORMERS_BATCHES),
        }
        (root / "job.json").write_text(json.dumps(job))
        run_as_user(python, [MEASURE, root / "job.json", root / "timings.json"], root, timeout=60 * 60,
                    OMP_WAIT_POLICY="PASSIVE")
        return json.loads((root / "timings.json").read_text())["wall"]


def report(seconds: dict[str, list[float]], new_tokens: int) -> str:
    """Requests/s and generated tokens/s of each candidate (medians), and the side-by-side ratios (medians of the
    per-round ratios)."""
    lines = ["| candidate | requests/s | generated tokens/s |", "|---|---|---|"]
    for name, series in seconds.items():
        median = statistics.median(series)
        lines.append(f"| {name} | {PROMPTS / median:.1f} | {PROMPTS * new_tokens / median:.0f} |")

    def ratio(slow: str, fast: str) -> float:
        return statistics.median(a / b for a, b in zip(seconds[slow], seconds[fast]))

    lines += ["", "| ratio | value |", "|---|---|"]
    for batch in TRANSFORMERS_BATCHES:
        lines.append(f"| throughput vLLM / Transformers generate (batch {batch}) | "
                     f"{ratio(f'transformers batch {batch}', 'vllm mmfuser'):.2f} |")
    lines.append(f"| vLLM time, MMFuser block / fuser_fusion=none (the fuser's cost) | "
                 f"{ratio('vllm mmfuser', 'vllm none'):.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after one warm-up round")
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens generated per prompt (EOS ignored)")
    arguments = parser.parse_args(argv)
    seconds = measure(arguments.rounds, arguments.new_tokens)
    print(f"{PROMPTS} prompts, {arguments.new_tokens} generated tokens each, {arguments.rounds} rounds, float32, CPU")
    print(report(seconds, arguments.new_tokens))


if __name__ == "__main__":
    main()
