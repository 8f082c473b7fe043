"""A Hub folder of this project gives the pinned release's outputs under every transformers release of the range.

Each release gets a cached venv holding only what a Hub user installs (torch CPU, that transformers, pillow, jinja2;
this package NOT importable). There it loads folders written by the project with `trust_remote_code=True` and must
give the float32 logits (<= 1e-5) and the greedy answers computed here, in the dev venv (the pinned release). The
folders: the bundled trained tiny model as `mmfuser-llava demo --save-dir` writes it (positive layer indices), and an
untrained tiny model with a perturbed fuser (negative indices), where reading any other vision layer changes the logits.
Loading the processor with `trust_remote_code=True` must be silent there (standard input closed: a prompt fails).

Adding a release to the matrix is one line in tests/transformers_releases.py.
"""

import json
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from isolated_venv import run_as_user
from modeling_mmfuser_llava.configuration_mmfuser_llava import check_transformers_release
from modeling_mmfuser_llava.demo import TRAINED_TINY_EXAMPLES, bundled_examples, write_trained_tiny_hub_folder
from modeling_mmfuser_llava.hub_folder import save_hub_folder
from modeling_mmfuser_llava.tiny import build_tiny_model
from transformers_release_probe import case_outputs
from transformers_releases import TRANSFORMERS_RELEASES, release_python

from conftest import perturb_fuser

pytestmark = pytest.mark.integration

PINNED_TRANSFORMERS = version("transformers")  # the dev venv's release (pyproject's dev extra)
LOGIT_TOLERANCE = 1e-5
PROBE = Path(__file__).with_name("transformers_release_probe.py")


def test_every_release_of_the_matrix_is_in_the_supported_range():
    for release in TRANSFORMERS_RELEASES:
        check_transformers_release(release)


def bundled_cases() -> list[dict]:
    """The bundled trained model's 16 questions about its 4 example pictures."""
    return [
        {"image": str(example["image"]), "question": question["question"]}
        for example in bundled_examples()
        for question in example["questions"]
    ]


def untrained_cases() -> list[dict]:
    pictures = sorted(TRAINED_TINY_EXAMPLES.glob("*.png"))[:2]
    questions = ["What is in this image?", "how many shapes are there"]
    return [{"image": str(picture), "question": question} for picture in pictures for question in questions]


@pytest.fixture(scope="module")
def hub_folders(tmp_path_factory) -> dict[str, tuple[Path, list[dict]]]:
    """Folders written by the project, each with the cases asked of it."""
    root = tmp_path_factory.mktemp("hub-folders")
    trained = write_trained_tiny_hub_folder(root / "trained-tiny")
    model, processor = build_tiny_model(seed=0)
    perturb_fuser(model)
    untrained = save_hub_folder(model, processor, root / "perturbed-tiny")
    return {"trained-tiny": (trained, bundled_cases()), "perturbed-tiny": (untrained, untrained_cases())}


@pytest.fixture(scope="module")
def references(hub_folders) -> dict[str, tuple[dict[str, torch.Tensor], list[str]]]:
    """Logits and answers under the pinned release, loaded the same way (trust_remote_code) in this process."""
    return {name: case_outputs(folder, cases) for name, (folder, cases) in hub_folders.items()}


@pytest.mark.parametrize("release", TRANSFORMERS_RELEASES)
def test_a_hub_folder_gives_the_pinned_logits_and_answers(release, hub_folders, references, tmp_path):
    python = release_python(release)
    differences, same_answers, questions = [], 0, 0
    for name, (folder, cases) in hub_folders.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(cases))
        out = tmp_path / f"{name}-outputs"
        run_as_user(python, [PROBE, "outputs", folder, tmp_path / f"{name}.json", out], cwd=tmp_path, timeout=900)
        logits, answers = load_file(f"{out}.safetensors"), json.loads(Path(f"{out}.json").read_text())
        reference_logits, reference_answers = references[name]
        assert logits.keys() == reference_logits.keys()
        differences += [(logits[key] - reference_logits[key]).abs().max().item() for key in reference_logits]
        same_answers += sum(got == want for got, want in zip(answers, reference_answers, strict=True))
        questions += len(cases)
    print(f"\ntransformers {release}: max abs logit difference {max(differences):.1e}, "
          f"same greedy answers {same_answers}/{questions}")
    assert max(differences) <= LOGIT_TOLERANCE
    assert same_answers == questions


@pytest.fixture(scope="module")
def processor_loading_report(hub_folders, tmp_path_factory) -> Callable[[str], dict]:
    """What `AutoProcessor.from_pretrained(folder)` printed or warned under a release, with and without
    trust_remote_code (one run per release)."""
    folder, _ = hub_folders["trained-tiny"]
    reports = {}

    def report(release: str) -> dict:
        if release not in reports:
            report_file = tmp_path_factory.mktemp(f"processor-{release}") / "report.json"
            arguments = [PROBE, "processor", folder, report_file]
            run_as_user(release_python(release), arguments, cwd=report_file.parent, timeout=300)
            reports[release] = json.loads(report_file.read_text())
        return reports[release]

    return report


SILENT = {"output": "", "warnings": [], "class": "LlavaProcessor"}


@pytest.mark.parametrize("release", TRANSFORMERS_RELEASES)
def test_loading_the_processor_with_trust_remote_code_is_silent(release, processor_loading_report):
    assert processor_loading_report(release)["trust_remote_code"] == SILENT


@pytest.mark.parametrize("release", TRANSFORMERS_RELEASES)
def test_loading_the_processor_without_trust_remote_code_gives_llava_processor(release, processor_loading_report):
    """Standard input is closed, so the prompt cannot wait: it gives up at once and the processor still loads."""
    assert processor_loading_report(release)["default"]["class"] == "LlavaProcessor"


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="LlavaProcessor loads its tokenizer with AutoTokenizer (transformers 5.23.0 processing_utils.py:1916), "
    "which loads the folder's config.json with AutoConfig whenever no `config`/`tokenizer_type`/`gguf_file` argument "
    "is passed, before it reads tokenizer_config.json (models/auto/tokenization_auto.py:801-810; 5.16.1: 771-777, "
    "5.24.0: 803-812). config.json's class is remote code, so without trust_remote_code AutoConfig asks 'Do you wish "
    "to run the custom code?' (dynamic_module_utils.py:766) and, refused, the fallback PreTrainedConfig warns 'You "
    "are using a model of type `mmfuser_llava` to instantiate a model of type ``' (configuration_utils.py:898-900). "
    "Only a built-in model_type in config.json avoids that, and then AutoModelForImageTextToText without "
    "trust_remote_code would silently build a plain Llava model",
)
@pytest.mark.parametrize("release", [PINNED_TRANSFORMERS])
def test_loading_the_processor_without_trust_remote_code_is_silent(release, processor_loading_report):
    assert processor_loading_report(release)["default"] == SILENT
