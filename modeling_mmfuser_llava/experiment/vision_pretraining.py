"""A tiny CLIP pretrained here, contrastively, on the task's pictures and their alt-text captions.

The paper's MMFuser fuses the layers of a frozen, text-aligned encoder (CLIP ViT-L/14-336): its deep layers carry what
captions talk about, its shallow layers the detail they do not. This tower is trained the same way at toy scale
(transformers' `CLIPModel` and its contrastive loss, through the `Trainer`) on captions that name only the large shape,
so nothing asks its deep layers to keep the small marks. Only its vision half is kept, as a `CLIPVisionModel` folder
that the training code takes as `--vision_tower`.
"""

import json
import tempfile
from pathlib import Path

import torch
from PIL import Image
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPVisionConfig,
    CLIPVisionModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
)

from ..hub_folder import staged_output
from ..processing import build_image_processor
from .task import FILES, IMAGE_DIR, IMAGE_SIZE, PATCH_SIZE

VISION_LAYERS = 8


def tiny_clip_config(vocab_size: int, end_of_text_id: int) -> CLIPConfig:
    """An 8-layer, 64-wide ViT with 8x8 patches (a 4x4 grid) and a 2-layer text tower."""
    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=VISION_LAYERS,
                              num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=64)
    text = CLIPTextConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                          vocab_size=vocab_size, max_position_embeddings=16, eos_token_id=end_of_text_id,
                          projection_dim=64)
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=64)


class CaptionedImages(torch.utils.data.Dataset):
    """The task's `clip_captions.json`: pixel values (LLaVA's preprocessing) and caption ids ending in CLIP's
    end-of-text token, which gets an id of its own past the tokenizer's vocabulary (CLIP pools its text there)."""

    def __init__(self, task_dir: Path, tokenizer: PreTrainedTokenizerBase):
        records = json.loads((task_dir / FILES["clip"]).read_text())
        image_processor = build_image_processor(IMAGE_SIZE)
        images = []
        for record in records:
            with Image.open(task_dir / IMAGE_DIR / record["image"]) as image:
                images.append(image.convert("RGB"))
        self.pixel_values = image_processor(images, return_tensors="pt")["pixel_values"]
        self.end_of_text_id = len(tokenizer)
        self.captions = [
            tokenizer(record["caption"], add_special_tokens=False)["input_ids"] + [self.end_of_text_id]
            for record in records
        ]
        self.pad_token_id = tokenizer.pad_token_id

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": self.pixel_values[index], "input_ids": self.captions[index]}

    def collate(self, items: list[dict]) -> dict[str, torch.Tensor]:
        length = max(len(item["input_ids"]) for item in items)
        ids = torch.full((len(items), length), self.pad_token_id)
        mask = torch.zeros((len(items), length), dtype=torch.long)
        for row, item in enumerate(items):
            ids[row, : len(item["input_ids"])] = torch.tensor(item["input_ids"])
            mask[row, : len(item["input_ids"])] = 1
        pixel_values = torch.stack([item["pixel_values"] for item in items])
        return {"pixel_values": pixel_values, "input_ids": ids, "attention_mask": mask, "return_loss": True}


def pretrain_vision_tower(
    task_dir: str | Path,
    tokenizer: PreTrainedTokenizerBase,
    output_dir: str | Path,
    epochs: float = 4,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    seed: int = 0,
) -> tuple[Path, list[float]]:
    """Train a tiny CLIP on the task's captions; write its vision tower to `output_dir`. Returns the folder and the
    contrastive loss of each logged step (the first and the last tell whether it learned)."""
    task_dir = Path(task_dir)
    dataset = CaptionedImages(task_dir, tokenizer)
    torch.manual_seed(seed)
    model = CLIPModel(tiny_clip_config(dataset.end_of_text_id + 1, dataset.end_of_text_id))
    with staged_output(output_dir, overwrite=True) as staging, tempfile.TemporaryDirectory() as scratch:
        arguments = TrainingArguments(
            output_dir=scratch, num_train_epochs=epochs, per_device_train_batch_size=batch_size,
            learning_rate=learning_rate, warmup_steps=0.1, lr_scheduler_type="cosine", weight_decay=0.1,
            logging_steps=5, logging_first_step=True, save_strategy="no", report_to="none", use_cpu=True,
            disable_tqdm=True, seed=seed, remove_unused_columns=False, dataloader_drop_last=True,
        )
        trainer = Trainer(model=model, args=arguments, train_dataset=dataset, data_collator=dataset.collate)
        trainer.train()
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        vision = CLIPVisionModel(model.config.vision_config)
        vision.load_state_dict(model.vision_model.state_dict())
        vision.save_pretrained(staging)
    return Path(output_dir), losses


__all__ = ["PATCH_SIZE", "VISION_LAYERS", "pretrain_vision_tower", "tiny_clip_config"]
