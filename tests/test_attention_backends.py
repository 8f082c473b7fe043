"""attn_implementation reaches the CLIP vision tower and the Llama language model; the fuser does not use it."""

import copy
import importlib.util

import pytest
import torch

from modeling_mmfuser_llava import MMFuserLlavaForConditionalGeneration

from conftest import chat, perturb_fuser

FLASH_ATTN_INSTALLED = importlib.util.find_spec("flash_attn") is not None


@pytest.fixture(scope="module")
def saved(tiny_pristine, tmp_path_factory):
    """The tiny model with a perturbed fuser (so that it matters), saved once for loading under each backend."""
    model, processor = tiny_pristine
    model = copy.deepcopy(model)
    perturb_fuser(model)
    folder = tmp_path_factory.mktemp("backends") / "model"
    model.save_pretrained(folder)
    return folder, processor


def load(folder, attn_implementation):
    return MMFuserLlavaForConditionalGeneration.from_pretrained(folder, attn_implementation=attn_implementation).eval()


def test_eager_and_sdpa_give_the_same_logits(saved, images):
    folder, processor = saved
    # Two prompts of different lengths: left padding puts the attention masks to work.
    inputs = chat(processor, ["What is in this image?", "Which colour is the large circle on the left?"], images[:2])
    logits = {}
    for backend in ("eager", "sdpa"):
        model = load(folder, backend)
        assert model.model.vision_tower.config._attn_implementation == backend
        assert model.model.language_model.config._attn_implementation == backend
        with torch.no_grad():
            logits[backend] = model(**inputs).logits
    attended = inputs["attention_mask"].bool()
    torch.testing.assert_close(logits["sdpa"][attended], logits["eager"][attended], rtol=1e-4, atol=1e-4)


def test_backends_can_differ_per_part(saved):
    model = load(saved[0], {"vision_config": "eager", "text_config": "sdpa"})
    assert model.model.vision_tower.config._attn_implementation == "eager"
    assert model.model.language_model.config._attn_implementation == "sdpa"


@pytest.mark.skipif(FLASH_ATTN_INSTALLED, reason="flash-attn is installed: the missing-package error cannot occur")
def test_flash_attention_2_without_flash_attn_is_a_clear_error(saved):
    with pytest.raises(ImportError, match="FlashAttention2 .*(not|n't).* installed"):
        load(saved[0], "flash_attention_2")


@pytest.mark.cuda
@pytest.mark.skipif(
    not (FLASH_ATTN_INSTALLED and torch.cuda.is_available()),
    reason="flash_attention_2 needs a CUDA GPU and flash-attn (PyPI has only its source, whose CUDA build takes far "
    "longer than a GPU lease); one of them is missing here",
)
def test_flash_attention_2_is_passed_through_and_matches_sdpa(saved, images):
    folder, processor = saved
    inputs = chat(processor, ["What is in this image?"], images[:1]).to("cuda", torch.bfloat16)
    logits = {}
    for backend in ("sdpa", "flash_attention_2"):
        model = MMFuserLlavaForConditionalGeneration.from_pretrained(
            folder, attn_implementation=backend, dtype=torch.bfloat16, device_map="cuda"
        ).eval()
        assert model.model.language_model.config._attn_implementation == backend
        assert model.model.vision_tower.config._attn_implementation == backend
        with torch.no_grad():
            logits[backend] = model(**inputs).logits.float()
    torch.testing.assert_close(logits["flash_attention_2"], logits["sdpa"], rtol=5e-2, atol=5e-2)
