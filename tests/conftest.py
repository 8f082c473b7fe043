"""Shared fixtures: the seeded tiny model, a fuser that matters (gates away from zero), images, the shared fixtures."""

import copy
from pathlib import Path

import pytest
import torch
from PIL import Image

from modeling_mmfuser_llava.tiny import build_tiny_model

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"


def perturb_fuser(model, seed: int = 0, scale: float = 0.2) -> None:
    """Move every fuser parameter away from its initial value, so that every path of the block changes the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.model.fuser.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))


@pytest.fixture(scope="session")
def tiny_pristine():
    """The tiny model exactly as the factory builds it (gates at zero) and its processor. Do not modify: copy."""
    return build_tiny_model(seed=0)


@pytest.fixture
def tiny(tiny_pristine):
    """A private copy of the tiny model with a perturbed fuser (so a broken fuser path shows), and the processor."""
    model, processor = tiny_pristine
    model = copy.deepcopy(model)
    perturb_fuser(model)
    return model, processor


@pytest.fixture(scope="session")
def images() -> list[Image.Image]:
    """Three distinct RGB images of different aspect ratios (padding to a square matters for two of them)."""
    generator = torch.Generator().manual_seed(1)
    sizes = [(48, 32), (32, 32), (20, 44)]
    return [
        Image.fromarray((torch.rand(h, w, 3, generator=generator) * 255).to(torch.uint8).numpy())
        for w, h in sizes
    ]


def chat(processor, questions: list[str], images: list[Image.Image], **kwargs):
    """Batch of single-turn vicuna_v1 prompts with one image each, tokenized and preprocessed."""
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
            add_generation_prompt=True,
        )
        for question in questions
    ]
    return processor(images=images, text=texts, return_tensors="pt", padding=True, **kwargs)


@pytest.fixture(scope="session")
def shared_fixtures() -> Path:
    if not SHARED_FIXTURES.is_dir():
        pytest.skip(f"the shared reference fixtures are not beside this checkout ({SHARED_FIXTURES})")
    return SHARED_FIXTURES
