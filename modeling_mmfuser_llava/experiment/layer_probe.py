"""How much of each fact each layer of the frozen tower still holds: the premise of the paper, measured on the toy.

For every hidden state of the vision tower, a small probe (LayerNorm and a two-layer MLP on each patch token, pooled
over the tokens with log-sum-exp) is trained to name a fact of the picture from that layer alone, and scored on the
test pictures. A fact that the shallow layers hold and the query layer has lost is what fusing layers can bring back.
"""

import json
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from transformers import CLIPVisionModel

from ..processing import build_image_processor
from .task import ANSWERS, FILES, IMAGE_DIR, IMAGE_SIZE, QUESTIONS


def facts_and_pixels(task_dir: Path, split: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Pixel values of the split's pictures and, per question kind, each picture's answer as a class index."""
    answers: dict[str, dict[str, str]] = {}
    if split == "train":
        for sample in json.loads((task_dir / FILES["stage2"]).read_text()):
            turns = sample["conversations"]
            for question, answer in zip(turns[::2], turns[1::2]):
                kind = next((k for k, (text, _) in QUESTIONS.items() if question["value"].endswith(text)), None)
                if kind is None:  # a referring question of the grounding variant: not a fact the probe names
                    break
                answers.setdefault(sample["image"], {})[kind] = answer["value"]
    else:
        for sample in json.loads((task_dir / FILES["test"]).read_text()):
            answers.setdefault(sample["image"], {})[sample["kind"]] = sample["conversations"][1]["value"]
    images = []
    for name in answers:
        with Image.open(task_dir / IMAGE_DIR / name) as image:
            images.append(image.convert("RGB"))
    pixels = build_image_processor(IMAGE_SIZE)(images, return_tensors="pt")["pixel_values"]
    labels = {kind: torch.tensor([ANSWERS[kind].index(facts[kind]) for facts in answers.values()]) for kind in QUESTIONS}
    return pixels, labels


def train_probe(features: torch.Tensor, labels: torch.Tensor, kind_classes: int, steps: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    hidden_size, num_classes = features.shape[-1], kind_classes
    probe = nn.Sequential(nn.LayerNorm(hidden_size), nn.Linear(hidden_size, 2 * hidden_size), nn.GELU(),
                          nn.Linear(2 * hidden_size, num_classes))
    optimizer = torch.optim.Adam(probe.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = torch.randint(0, len(labels), (128,), generator=generator)
        loss = nn.functional.cross_entropy(probe(features[batch]).logsumexp(1), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return probe


@torch.no_grad()
def hidden_states(tower: CLIPVisionModel, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every hidden state's patch tokens (CLS dropped, as the model's "default" strategy does)."""
    return tuple(state[:, 1:] for state in tower(pixels, output_hidden_states=True).hidden_states)


def probe_layers(vision_tower: str | Path, task_dir: str | Path, steps: int = 400, seed: int = 0,
                 kinds: tuple[str, ...] = tuple(QUESTIONS)) -> dict[str, list[float]]:
    """Per question kind in `kinds`, the test accuracy of a probe on each hidden state (index 0: the embeddings)."""
    task_dir = Path(task_dir)
    tower = CLIPVisionModel.from_pretrained(vision_tower).eval()
    train_pixels, train_labels = facts_and_pixels(task_dir, "train")
    test_pixels, test_labels = facts_and_pixels(task_dir, "test")
    train_states, test_states = hidden_states(tower, train_pixels), hidden_states(tower, test_pixels)
    accuracy = {}
    for kind in kinds:
        accuracy[kind] = []
        for train_features, test_features in zip(train_states, test_states):
            probe = train_probe(train_features, train_labels[kind], len(ANSWERS[kind]), steps, seed)
            with torch.no_grad():
                predicted = probe(test_features).logsumexp(1).argmax(1)
            accuracy[kind].append((predicted == test_labels[kind]).float().mean().item())
    return accuracy


__all__ = ["probe_layers"]
