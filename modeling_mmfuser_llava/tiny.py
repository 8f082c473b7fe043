"""A seeded tiny MMFuser-LLaVA built offline in about a second: for tests, notebooks and the demo.

The shapes are real where they matter: a 24-layer CLIP tower (so the default layer indices select layers 3/8/13/18
and 23 as at full size), a Llama language model, and a Llama-style sentencepiece tokenizer (BPE with byte fallback
and a dummy prefix) trained here on a small word list.
"""

import io
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path

import sentencepiece
import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlamaTokenizer, LlavaProcessor

from .configuration_mmfuser_llava import MMFuserLlavaConfig
from .modeling_mmfuser_llava import MMFuserLlavaForConditionalGeneration
from .processing import IMAGE_TOKEN, VICUNA_V1_SYSTEM_PROMPT, build_processor, prepare_tokenizer

TINY_IMAGE_SIZE = 32
TINY_PATCH_SIZE = 4

_CORPUS_WORDS = (
    "what is in this image describe the picture how many shapes are there which colour is the circle square "
    "triangle red green blue yellow black white left right top bottom small large one two three four five yes no "
    "USER ASSISTANT read the digit letter"
).split()


def train_tiny_sentencepiece(vocab_size: int = 400, seed: int = 0, words: Sequence[str] = _CORPUS_WORDS) -> bytes:
    """A Llama-style sentencepiece model (the same trainer options as Llama's) trained on a seeded corpus: the system
    prompt and random sentences of `words`."""
    rng = random.Random(seed)
    sentences = [VICUNA_V1_SYSTEM_PROMPT] * 20 + [" ".join(rng.choice(words) for _ in range(12)) for _ in range(2000)]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        character_coverage=1.0,
        num_threads=1,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    return model.getvalue()


def build_tiny_tokenizer(sentencepiece_model: bytes | None = None) -> LlamaTokenizer:
    """A transformers Llama tokenizer converted from `sentencepiece_model`, with `<image>` and `<pad>` added."""
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "tokenizer.model").write_bytes(sentencepiece_model or train_tiny_sentencepiece())
        tokenizer = LlamaTokenizer.from_pretrained(folder, add_bos_token=True, add_eos_token=False)
    prepare_tokenizer(tokenizer)
    return tokenizer


def tiny_config(tokenizer: LlamaTokenizer, **overrides) -> MMFuserLlavaConfig:
    """The tiny architecture for `tokenizer`'s vocabulary; `overrides` go to `MMFuserLlavaConfig`."""
    vision_config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=24,
        num_attention_heads=4,
        image_size=TINY_IMAGE_SIZE,
        patch_size=TINY_PATCH_SIZE,
        projection_dim=32,
    )
    text_config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    settings = dict(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=(TINY_IMAGE_SIZE // TINY_PATCH_SIZE) ** 2,
        pad_token_id=tokenizer.pad_token_id,
    )
    return MMFuserLlavaConfig(**{**settings, **overrides})


def build_tiny_model(
    seed: int = 0, **config_overrides
) -> tuple[MMFuserLlavaForConditionalGeneration, LlavaProcessor]:
    """A seeded tiny MMFuser-LLaVA in eval mode and its processor, built offline."""
    tokenizer = build_tiny_tokenizer(train_tiny_sentencepiece(seed=seed))
    config = tiny_config(tokenizer, **config_overrides)
    torch.manual_seed(seed)
    model = MMFuserLlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    processor = build_processor(tokenizer, TINY_IMAGE_SIZE, TINY_PATCH_SIZE, config.vision_feature_select_strategy)
    return model, processor


__all__ = ["build_tiny_model", "build_tiny_tokenizer", "tiny_config", "train_tiny_sentencepiece"]
