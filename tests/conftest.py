"""Shared fixtures: the seeded tiny model, a fuser that matters (gates away from zero), images, the shared fixtures."""

import copy
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import LlavaConfig, LlavaForConditionalGeneration

from modeling_mmfuser_llava import MMFuserLlavaForConditionalGeneration
from modeling_mmfuser_llava.tiny import build_tiny_model

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"


def perturb_fuser(model, seed: int = 0, scale: float = 0.2) -> None:
    """Move every fuser parameter away from its initial value, so that every path of the block changes the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.model.fuser.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))


def assert_xavier_uniform(weight: torch.Tensor) -> None:
    """`weight` looks drawn from Xavier-uniform, U(-b, b) with b = sqrt(6 / (fan_in + fan_out)): its largest value is
    near b and its standard deviation near b / sqrt(3). PyTorch's default `nn.Linear` init, U(-1/sqrt(fan_in), ...),
    has b / sqrt(3) on a square matrix and fails both (test_fuser_parity shows it)."""
    fan_out, fan_in = weight.shape
    bound = math.sqrt(6 / (fan_in + fan_out))
    largest, spread = weight.abs().max().item(), weight.std().item()
    assert 0.9 * bound < largest <= bound, f"largest |weight| {largest:.4f}, Xavier bound {bound:.4f}"
    assert abs(spread / (bound / math.sqrt(3)) - 1) < 0.15, f"std {spread:.4f}, Xavier's {bound / math.sqrt(3):.4f}"


def assert_original_initialisation(fuser) -> None:
    """Zero gates, zero offset and attention-weight projections, zero biases, Xavier value/output weights, and the
    offset bias that points head h along angle 2*pi*h/heads at distances 1..points, as the original initialises."""
    assert torch.count_nonzero(fuser.gamma1) == 0 and torch.count_nonzero(fuser.gamma2) == 0
    for attention in (fuser.cross_attn, fuser.self_attn):
        heads, levels, points = attention.num_heads, attention.num_levels, attention.num_points
        for zero in (attention.sampling_offsets.weight, attention.attention_weights.weight,
                     attention.attention_weights.bias, attention.value_proj.bias, attention.output_proj.bias):
            assert torch.count_nonzero(zero) == 0
        for projection in (attention.value_proj.weight, attention.output_proj.weight):
            assert_xavier_uniform(projection)
        bias = attention.sampling_offsets.bias.view(heads, levels, points, 2)
        for head in range(heads):
            angle = 2 * math.pi * head / heads
            direction = torch.tensor([math.cos(angle), math.sin(angle)])
            direction = direction / direction.abs().max()
            for point in range(points):
                torch.testing.assert_close(bias[head, :, point], (point + 1) * direction.expand(levels, 2))


def plain_llava_with_same_weights(model: MMFuserLlavaForConditionalGeneration) -> LlavaForConditionalGeneration:
    """A stock Llava holding the same vision tower, projector and language model (everything but the fuser)."""
    config = model.config
    llava_config = LlavaConfig(
        vision_config=config.vision_config.to_dict(),
        text_config=config.text_config.to_dict(),
        image_token_index=config.image_token_index,
        image_seq_length=config.image_seq_length,
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
    )
    llava = LlavaForConditionalGeneration(llava_config).eval()
    state = {key: value for key, value in model.state_dict().items() if not key.startswith("model.fuser.")}
    llava.load_state_dict(state, strict=True)
    return llava


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
    return sample_images()


def sample_images() -> list[Image.Image]:
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


def bundled_questions() -> tuple[list[Image.Image], list[str], list[str]]:
    """Every question about every bundled example picture of the trained tiny model: pictures, questions, answers."""
    from modeling_mmfuser_llava.demo import bundled_examples

    images, questions, answers = [], [], []
    for example in bundled_examples():
        with Image.open(example["image"]) as image:
            picture = image.convert("RGB")
        for question in example["questions"]:
            images.append(picture)
            questions.append(question["question"])
            answers.append(question["answer"])
    return images, questions, answers


def linear_types(model) -> dict[str, set[str]]:
    """Class names of the nn.Linear modules (bitsandbytes' layers are nn.Linear too) per part of the model."""
    types = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            types.setdefault(name.removeprefix("model.").split(".")[0], set()).add(type(module).__name__)
    return types
