"""The toy world's two starting points, as the paper's stage 1 takes them: a base LLM with its tokenizer, and a CLIP.

The language model is a small Llama with a sentencepiece tokenizer trained on the task's words. The paper's LLM
(Vicuna) arrives pretrained, and stage 1 works because it reads the projected image tokens like words in its context;
a random LLM frozen in stage 1 would leave the fuser and projector nothing to align to. So the toy LLM is pretrained
here too, on text alone: each training caption preceded by its content words in a random order, from which it learns
to reuse words of its context. It never sees a picture or a question. The vision tower is `vision_pretraining`'s.
"""

import json
import random
import tempfile
from pathlib import Path

import torch
from transformers import (
    DataCollatorForLanguageModeling,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaTokenizer,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
)

from ..hub_folder import staged_output
from ..tiny import build_tiny_tokenizer, train_tiny_sentencepiece
from .task import FILES, task_words
from .vision_pretraining import pretrain_vision_tower

VOCAB_SIZE = 512


CONTEXT_FREE_WORDS = {"a", "and"}


def context_then_caption(caption: str, rng: random.Random) -> str:
    """The caption's content words in a random order, then the caption: for "a red circle and small purple crosses",
    e.g. "crosses red purple circle small a red circle and small purple crosses"."""
    words = [word for word in caption.split() if word not in CONTEXT_FREE_WORDS]
    rng.shuffle(words)
    return f"{' '.join(words)} {caption}"


def pretrain_language_model(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase, captions: list[str],
                            epochs: float = 3, seed: int = 0) -> list[float]:
    """Causal-LM training on `context_then_caption` texts; returns the logged losses."""
    rng = random.Random(seed)
    texts = [context_then_caption(caption, rng) + tokenizer.eos_token for caption in captions]
    dataset = [{"input_ids": tokenizer(text)["input_ids"]} for text in texts]
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    with tempfile.TemporaryDirectory() as scratch:
        arguments = TrainingArguments(
            output_dir=scratch, num_train_epochs=epochs, per_device_train_batch_size=32, learning_rate=2e-3,
            warmup_steps=0.05, lr_scheduler_type="cosine", logging_steps=10, save_strategy="no", report_to="none",
            use_cpu=True, disable_tqdm=True, seed=seed, logging_first_step=True,
        )
        trainer = Trainer(model=model, args=arguments, train_dataset=dataset, data_collator=collator)
        trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def write_base_language_model(output_dir: str | Path, sentencepiece_model: bytes, captions: list[str],
                              seed: int = 0) -> tuple[Path, list[float]]:
    """A 2-layer Llama pretrained on `captions` (see `pretrain_language_model`) and its plain tokenizer (no
    `<image>`, no pad: the training code adds them, as it does to Vicuna's), saved for `--model_name_or_path`.
    Returns the folder and the pretraining losses."""
    with staged_output(output_dir, overwrite=True) as staging:
        (staging / "tokenizer.model").write_bytes(sentencepiece_model)
        tokenizer = LlamaTokenizer.from_pretrained(staging, legacy=True)
        config = LlamaConfig(
            hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
            vocab_size=len(tokenizer), max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        tokenizer.pad_token = tokenizer.unk_token  # for batching the pretraining texts only; not saved
        losses = pretrain_language_model(model, tokenizer, captions, seed=seed)
        model.save_pretrained(staging)
        tokenizer.pad_token = None
        tokenizer.save_pretrained(staging)
    return Path(output_dir), losses


def write_base_models(task_dir: str | Path, output_dir: str | Path, seed: int = 0) -> tuple[Path, Path, dict]:
    """`output_dir/llm` and `output_dir/clip`, both pretrained on the task's training captions (text alone, and
    alt-text with pictures); returns them and the first and last loss of each pretraining."""
    output_dir, task_dir = Path(output_dir), Path(task_dir)
    grounding = (task_dir / FILES["grounding_test"]).is_file()
    sentencepiece_model = train_tiny_sentencepiece(VOCAB_SIZE, seed, task_words(grounding))
    captions = [sample["conversations"][1]["value"] for sample in json.loads((task_dir / FILES["stage1"]).read_text())]
    llm, llm_losses = write_base_language_model(output_dir / "llm", sentencepiece_model, captions, seed)
    clip, clip_losses = pretrain_vision_tower(task_dir, build_tiny_tokenizer(sentencepiece_model), output_dir / "clip",
                                              seed=seed)
    losses = {"llm": llm_losses, "clip": clip_losses}
    return llm, clip, {name: {"first": values[0], "last": values[-1]} for name, values in losses.items()}


__all__ = ["write_base_language_model", "write_base_models"]
