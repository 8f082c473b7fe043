"""MMFuser generates as transformers' own `LlavaForConditionalGeneration` does, in every generation mode.

transformers' generation tests (`tests/generation/test_utils.py`) and Llava's model tests live only in its git
repository, not in the PyPI sdist vendored under tests/transformers_suite/; this file, written by the project, is the
generation coverage in their place. The reference is always transformers' Llava running its own `generate` (merging of
image features, cache, beam expansion, assisted decoding), never MMFuser against itself:
- untrained: MMFuser's gates are zero, so its image features are Llava's penultimate-layer features, and a stock Llava
  holding the same weights must generate the same;
- trained: the bundled trained tiny model, whose fuser changes the features; the reference Llava's `get_image_features`
  returns features computed up front from Llava's own vision tower, MMFuser's fuser and the shared projector, so only
  the generation plumbing around the features is compared.
Token ids must be equal; scores, logits, hidden states and attentions within 1e-5 (float32).
"""

from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, Cache, LlavaForConditionalGeneration, LlavaProcessor, StaticCache
from transformers.modeling_outputs import BaseModelOutputWithPooling

from modeling_mmfuser_llava import MMFuserLlavaForConditionalGeneration
from modeling_mmfuser_llava.demo import TRAINED_TINY_MODEL, bundled_examples

from conftest import chat, plain_llava_with_same_weights, sample_images

TOLERANCE = 1e-5
MAX_NEW_TOKENS = 6


class PrecomputedImageFeatures:
    """A Llava `get_image_features` that returns features computed up front for known pixel values, one per image."""

    def __init__(self, pixel_values: torch.Tensor, features: torch.Tensor) -> None:
        self.known = list(zip(pixel_values, features))

    def feature_of(self, image: torch.Tensor) -> torch.Tensor:
        for pixel_values, features in self.known:
            if torch.equal(pixel_values, image):
                return features
        raise KeyError("no features were computed up front for these pixel values")

    def __call__(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        return BaseModelOutputWithPooling(pooler_output=[self.feature_of(image) for image in pixel_values])


def fused_features_outside_mmfuser(
    mmfuser: MMFuserLlavaForConditionalGeneration, llava: LlavaForConditionalGeneration, pixel_values: torch.Tensor
) -> torch.Tensor:
    """MMFuser's image features, computed from Llava's vision tower (every hidden state, indexed here), MMFuser's fuser
    module and Llava's projector, without MMFuser's `get_image_features`."""
    config = mmfuser.config
    with torch.no_grad():
        hidden_states = llava.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
        tokens = slice(1, None) if config.vision_feature_select_strategy == "default" else slice(None)
        query = hidden_states[config.vision_feature_layer][:, tokens]
        keys_values = [hidden_states[layer][:, tokens] for layer in config.fuser_key_value_layers]
        return llava.model.multi_modal_projector(mmfuser.model.fuser(query, keys_values))


@dataclass
class ModelPair:
    """An MMFuser, the Llava it must generate as, its processor, and one single-image and one batched prompt."""

    mmfuser: MMFuserLlavaForConditionalGeneration
    llava: LlavaForConditionalGeneration
    processor: LlavaProcessor
    single: dict
    batch: dict
    vision_batches: list[int] = field(default_factory=list)  # images per vision tower pass of MMFuser


def batched_prompts(processor, questions: list[str], images: list[Image.Image]) -> tuple[dict, dict]:
    single, batch = chat(processor, questions[:1], images[:1]), chat(processor, questions, images)
    assert (batch["attention_mask"] == 0).any(), "the batched prompts must differ in length (left padding)"
    assert not torch.equal(batch["pixel_values"][0], batch["pixel_values"][1])
    return dict(single), dict(batch)


def untrained_pair(tiny_pristine) -> ModelPair:
    model, processor = tiny_pristine
    assert model.config.vision_feature_layer == -2
    assert torch.count_nonzero(model.model.fuser.gamma1) == 0 and torch.count_nonzero(model.model.fuser.gamma2) == 0
    llava = plain_llava_with_same_weights(model)
    assert llava.config.vision_feature_select_strategy == model.config.vision_feature_select_strategy
    questions = ["What is in this image?", "How many shapes are there in the picture on the left?"]
    return ModelPair(model, llava, processor, *batched_prompts(processor, questions, sample_images()[:2]))


def trained_pair() -> ModelPair:
    model = MMFuserLlavaForConditionalGeneration.from_pretrained(TRAINED_TINY_MODEL).eval()
    processor = AutoProcessor.from_pretrained(TRAINED_TINY_MODEL)
    examples = bundled_examples()[:2]
    images = [Image.open(example["image"]).convert("RGB") for example in examples]
    questions = [examples[0]["questions"][0]["question"], "describe " + examples[1]["questions"][1]["question"]]
    single, batch = batched_prompts(processor, questions, images)
    llava = plain_llava_with_same_weights(model)
    with torch.no_grad():
        own_features = llava.model.get_image_features(batch["pixel_values"]).pooler_output
    fused = fused_features_outside_mmfuser(model, llava, batch["pixel_values"])
    assert (fused - torch.stack(own_features)).abs().max() > 1e-2, "the trained fuser must change the features"
    llava.model.get_image_features = PrecomputedImageFeatures(batch["pixel_values"], fused)
    return ModelPair(model, llava, processor, single, batch)


@pytest.fixture(scope="module", params=["untrained", "trained"])
def pair(request, tiny_pristine):
    """Each case once per module; MMFuser's vision tower passes are recorded in `vision_batches`."""
    built = untrained_pair(tiny_pristine) if request.param == "untrained" else trained_pair()
    hook = built.mmfuser.model.vision_tower.register_forward_hook(
        lambda module, args, output: built.vision_batches.append(args[0].shape[0])
    )
    yield built
    hook.remove()


def assert_same_outputs(ours, theirs, where: str = "output") -> None:
    """Equal token ids and integer tensors, float tensors within TOLERANCE, recursively through tuples and outputs."""
    if isinstance(theirs, torch.Tensor):
        assert isinstance(ours, torch.Tensor) and ours.shape == theirs.shape, f"{where}: shapes differ"
        if theirs.dtype.is_floating_point:
            torch.testing.assert_close(ours, theirs, atol=TOLERANCE, rtol=0, msg=lambda message: f"{where}: {message}")
        else:
            assert torch.equal(ours, theirs), f"{where}: differs"
    elif isinstance(theirs, (tuple, list)):
        assert isinstance(ours, (tuple, list)) and len(ours) == len(theirs), f"{where}: lengths differ"
        for index, (mine, reference) in enumerate(zip(ours, theirs)):
            assert_same_outputs(mine, reference, f"{where}[{index}]")
    elif isinstance(theirs, Cache):
        assert len(ours.layers) == len(theirs.layers), f"{where}: layer counts differ"
        for index, (layer, reference) in enumerate(zip(ours.layers, theirs.layers)):
            assert_same_outputs((layer.keys, layer.values), (reference.keys, reference.values), f"{where}[{index}]")
    elif hasattr(theirs, "keys"):  # a ModelOutput
        assert set(ours.keys()) == set(theirs.keys()), f"{where}: fields differ"
        for key in theirs.keys():
            assert_same_outputs(ours[key], theirs[key], f"{where}.{key}")
    else:
        assert ours == theirs, f"{where}: differs"


def generate_both(pair: ModelPair, inputs: dict, self_assisted: bool = False, **settings):
    """`generate` of MMFuser and of Llava with the same settings and seed 0; or skip, if both refuse the settings.

    With the KV cache unless `use_cache=False` is given: the bundled trained model's generation config turns it off.
    `self_assisted`: each model is its own assistant model (assisted decoding)."""
    settings.setdefault("use_cache", True)
    results, errors = [], []
    for model in (pair.mmfuser, pair.llava):
        torch.manual_seed(0)
        assistant = {"assistant_model": model} if self_assisted else {}
        try:
            with torch.no_grad():
                results.append(model.generate(**inputs, **assistant, **settings))
        except (ValueError, NotImplementedError, TypeError) as error:
            errors.append(error)
    if len(errors) == 2 and (type(errors[0]), str(errors[0])) == (type(errors[1]), str(errors[1])):
        reason = f"transformers refuses {settings} for both models: {errors[1]}"
        print(reason)
        pytest.skip(reason)
    if errors:
        raise errors[0]
    return results


@dataclass(frozen=True)
class Mode:
    name: str
    settings: dict
    batched: bool = False
    # Prompt lookup copies candidates from the prompt, image placeholders included, which both models then refuse
    # (more placeholders than features); suppressing the image token is what keeps them out of the candidates.
    suppress_image_token: bool = False
    self_assisted: bool = False  # the model drafts for itself as `assistant_model` (given the features computed once)


RETURN_ALL = dict(return_dict_in_generate=True, output_scores=True, output_logits=True)
MODES = [
    Mode("greedy", dict(do_sample=False)),
    Mode("sampling", dict(do_sample=True, top_k=20, top_p=0.9, temperature=0.7)),
    Mode("beam_search", dict(do_sample=False, num_beams=3, num_return_sequences=2)),
    Mode("beam_sampling", dict(do_sample=True, num_beams=3, num_return_sequences=2, temperature=0.7)),
    Mode("prompt_lookup", dict(do_sample=False, prompt_lookup_num_tokens=3), suppress_image_token=True),
    Mode("prompt_lookup_with_image_token_candidates", dict(do_sample=False, prompt_lookup_num_tokens=3)),
    Mode("assistant_model", dict(do_sample=False), suppress_image_token=True, self_assisted=True),
    Mode("no_cache", dict(do_sample=False, use_cache=False)),
    Mode("static_cache", dict(do_sample=False, cache_implementation="static")),
    Mode("hidden_states", dict(do_sample=False, output_hidden_states=True)),
    Mode("batched_left_padding", dict(do_sample=False), batched=True),
    Mode("batched_sampling", dict(do_sample=True, top_k=20, temperature=0.7), batched=True),
    Mode("batched_beam_search", dict(do_sample=False, num_beams=3, num_return_sequences=2), batched=True),
    Mode("batched_static_cache", dict(do_sample=False, cache_implementation="static"), batched=True),
]


@pytest.mark.parametrize("mode", MODES, ids=lambda mode: mode.name)
def test_generate_equals_llava(pair: ModelPair, mode: Mode):
    inputs = pair.batch if mode.batched else pair.single
    settings = {**RETURN_ALL, **mode.settings}
    if mode.suppress_image_token:
        settings["suppress_tokens"] = [pair.mmfuser.config.image_token_id]
    pair.vision_batches.clear()
    ours, theirs = generate_both(
        pair, inputs, mode.self_assisted, max_new_tokens=MAX_NEW_TOKENS, min_new_tokens=MAX_NEW_TOKENS, **settings
    )
    assert ours.sequences.shape[1] == inputs["input_ids"].shape[1] + MAX_NEW_TOKENS
    if settings.get("cache_implementation") == "static":
        assert isinstance(ours.past_key_values, StaticCache) and isinstance(theirs.past_key_values, StaticCache)
    assert_same_outputs(ours, theirs)
    # One vision pass per generate call, over the prompts' images only (not once per step, beam or returned sequence).
    assert pair.vision_batches == [inputs["pixel_values"].shape[0]]


@contextmanager
def eager_attention(*models):
    """Eager attention for a while: under SDPA, transformers 5 returns `attentions` as an empty tuple."""
    previous = [model.config._attn_implementation for model in models]
    for model in models:
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        for model, implementation in zip(models, previous):
            model.set_attn_implementation(implementation)


@pytest.mark.parametrize("batched", [False, True], ids=["single", "batched"])
def test_hidden_states_and_attentions_of_every_step_equal_llava(pair: ModelPair, batched: bool):
    inputs = pair.batch if batched else pair.single
    with eager_attention(pair.mmfuser, pair.llava):
        ours, theirs = generate_both(
            pair, inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False, output_hidden_states=True,
            output_attentions=True, **RETURN_ALL,
        )
    text = pair.mmfuser.config.text_config
    rows, prompt_length = inputs["input_ids"].shape
    assert len(ours.scores) == len(ours.logits) == len(ours.hidden_states) == len(ours.attentions) == 3
    assert ours.logits[0].shape == (rows, text.vocab_size)
    for step, (hidden_states, attentions) in enumerate(zip(ours.hidden_states, ours.attentions)):
        queries = prompt_length if step == 0 else 1
        assert len(hidden_states) == text.num_hidden_layers + 1 and len(attentions) == text.num_hidden_layers
        assert hidden_states[-1].shape == (rows, queries, text.hidden_size)
        assert attentions[-1].shape == (rows, text.num_attention_heads, queries, prompt_length + step)
    assert_same_outputs(ours, theirs)


@pytest.mark.parametrize("follow_up", ["", " USER: and the other shapes? ASSISTANT:"], ids=["same_turn", "next_turn"])
def test_continuing_from_the_returned_cache_equals_llava(pair: ModelPair, follow_up: str):
    """A second `generate` on the returned sequences (plus, maybe, a next turn) and the returned cache; the image is in
    the cache, so no pixel values are given and MMFuser's vision tower must not run."""
    inputs = pair.batch
    first = generate_both(pair, inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False, **RETURN_ALL)
    assert_same_outputs(*first)
    rows = inputs["input_ids"].shape[0]
    next_turn = pair.processor.tokenizer(follow_up, add_special_tokens=False, return_tensors="pt").input_ids
    continued = []
    pair.vision_batches.clear()
    for model, earlier in zip((pair.mmfuser, pair.llava), first):
        input_ids = torch.cat([earlier.sequences, next_turn.expand(rows, -1)], dim=1)
        appended = input_ids[:, inputs["input_ids"].shape[1] :]
        attention_mask = torch.cat([inputs["attention_mask"], torch.ones_like(appended)], dim=1)
        with torch.no_grad():
            continued.append(model.generate(
                input_ids=input_ids, attention_mask=attention_mask, past_key_values=earlier.past_key_values,
                max_new_tokens=4, min_new_tokens=4, do_sample=False, **RETURN_ALL,
            ))
    assert pair.vision_batches == []
    assert continued[0].sequences.shape[1] == inputs["input_ids"].shape[1] + 3 + next_turn.shape[1] + 4
    assert_same_outputs(*continued)


def test_eos_stops_generation_unless_min_new_tokens_forbids_it(pair: ModelPair):
    """The second token Llava generates is made the end-of-sequence token: both stop there, or go on under
    min_new_tokens. (The free run's eos is the image token, never generated, so that it runs as the others do.)"""
    inputs = pair.batch
    prompt_length = inputs["input_ids"].shape[1]
    with torch.no_grad():
        free = pair.llava.generate(
            **inputs, max_new_tokens=8, do_sample=False, use_cache=True, eos_token_id=pair.mmfuser.config.image_token_id
        )
    eos = int(free[0, prompt_length + 1])
    assert free[0, prompt_length] != eos
    stopped = generate_both(pair, inputs, max_new_tokens=8, do_sample=False, eos_token_id=eos, **RETURN_ALL)
    assert_same_outputs(*stopped)
    first_row = stopped[0].sequences[0, prompt_length:]
    assert first_row[1] == eos and (first_row[2:] == pair.mmfuser.generation_config.pad_token_id).all()
    held = generate_both(
        pair, inputs, max_new_tokens=8, min_new_tokens=5, do_sample=False, eos_token_id=eos, **RETURN_ALL
    )
    assert_same_outputs(*held)
    assert (held[0].sequences[:, prompt_length : prompt_length + 5] != eos).all()
