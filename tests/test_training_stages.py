"""The two-stage recipe end to end on the tiny model: what each stage trains and writes, resuming, and learning."""

import inspect
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoProcessor

from isolated_venv import run_as_user
from training_support import (  # noqa: F401  (fixtures)
    base_parts,
    captions,
    instructions,
    losses,
    one_thread,
    tiny_checkpoint,
    train,
    training_argv,
    weights,
)

STAGE1 = ("--version", "plain", "--tune_mm_mlp_adapter", "True")
MM_ADAPTER = ("model.fuser.", "model.multi_modal_projector.")


def changed(before: dict, after: dict, prefixes: tuple[str, ...]) -> bool:
    keys = [key for key in before if key.startswith(prefixes)]
    assert keys
    return any(not torch.equal(before[key], after[key]) for key in keys)


def test_stage1_trains_fuser_and_projector_into_one_file(tmp_path, tiny_checkpoint, captions):
    start = weights(tiny_checkpoint)
    trainer = train(*training_argv(tmp_path / "stage1", tiny_checkpoint, captions, *STAGE1,
                                   "--ms_cross_attn_lr", "1e-3", "--activation_checkpointing", "True"))
    saved = load_file(tmp_path / "stage1" / "mm_projector.safetensors")
    assert set(saved) == {key for key in start if key.startswith(MM_ADAPTER)}
    assert changed(start, saved, ("model.fuser.",)) and changed(start, saved, ("model.multi_modal_projector.",))
    assert saved["model.fuser.gamma1"].abs().sum() > 0  # the gates left zero: the fuser now contributes
    assert not list((tmp_path / "stage1").glob("model*.safetensors"))  # no copy of the frozen LLM
    after = trainer.model.state_dict()
    assert not changed(start, after, ("model.language_model.", "lm_head.", "model.vision_tower."))


def test_stage2_starts_from_base_llm_clip_and_stage1_file(tmp_path, base_parts, captions, instructions):
    llm, clip = base_parts
    fresh = ("--vision_tower", str(clip))
    train(*training_argv(tmp_path / "stage1", llm, captions, *STAGE1, *fresh))
    stage1_file = tmp_path / "stage1" / "mm_projector.safetensors"
    stage2 = (*fresh, "--pretrain_mm_mlp_adapter", str(stage1_file), "--group_by_modality_length", "True")
    # With the fuser and projector frozen, stage 2 must save exactly what stage 1 wrote: the file was loaded.
    train(*training_argv(tmp_path / "frozen", llm, instructions, *stage2, "--freeze_mm_mlp_adapter", "True", steps=2))
    frozen, stage1_weights = weights(tmp_path / "frozen"), load_file(stage1_file)
    assert set(stage1_weights) == {key for key in frozen if key.startswith(MM_ADAPTER)}  # the whole fuser and MLP
    assert all(torch.equal(frozen[key], value) for key, value in stage1_weights.items())
    # Stage 2 proper trains fuser, projector and LLM; the vision tower stays the CLIP checkpoint's.
    train(*training_argv(tmp_path / "stage2", llm, instructions, *stage2, steps=2))
    stage2_weights = weights(tmp_path / "stage2")
    for prefixes in [("model.fuser.",), ("model.multi_modal_projector.",), ("model.language_model.layers.",)]:
        assert changed(frozen, stage2_weights, prefixes), prefixes
    clip_weights = weights(clip)
    assert all(torch.equal(stage2_weights[f"model.vision_tower.{key}"], value) for key, value in clip_weights.items())


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_resume_restores_weights_optimizer_and_step(tmp_path, tiny_checkpoint, captions, instructions, stage):
    """6 steps in one go == 3 steps, a checkpoint, and a resumed run of 3 more. The resumed run starts from a model
    whose fuser and projector are scrambled, so only weights restored from the checkpoint give the same result; a
    fresh optimizer (Adam's moments) or step count (the cosine schedule, the data position) would differ too."""
    data, flags = (captions, STAGE1) if stage == "stage1" else (instructions, ())
    checkpointing = ("--save_strategy", "steps", "--save_steps", "3", "--lr_scheduler_type", "cosine")
    straight = train(*training_argv(tmp_path / "straight", tiny_checkpoint, data, *flags, *checkpointing, steps=6))
    checkpoint = tmp_path / "straight" / "checkpoint-3"
    assert (checkpoint / "optimizer.pt").is_file() and (checkpoint / "scheduler.pt").is_file()
    shutil.copytree(checkpoint, tmp_path / "resumed" / "checkpoint-3")
    scrambled = tmp_path / "scrambled"
    shutil.copytree(tiny_checkpoint, scrambled)
    start = weights(tiny_checkpoint)
    generator = torch.Generator().manual_seed(0)
    for key in [key for key in start if key.startswith(MM_ADAPTER)]:
        start[key] = start[key] + torch.randn(start[key].shape, generator=generator)
    save_file(start, scrambled / "model.safetensors", metadata={"format": "pt"})
    resumed = train(*training_argv(tmp_path / "resumed", scrambled, data, *flags, *checkpointing, steps=6))
    assert resumed.state.global_step == 6
    assert losses(resumed) == pytest.approx(losses(straight), abs=1e-5)  # steps 1-3 from the checkpoint's log
    final_straight, final_resumed = straight.model.state_dict(), resumed.model.state_dict()
    for key in [key for key in final_straight if key.startswith(MM_ADAPTER + ("model.language_model.",))]:
        assert torch.allclose(final_straight[key], final_resumed[key], atol=1e-6), key


def test_tiny_model_learns_and_its_output_reloads_and_generates(tmp_path, tiny_checkpoint, instructions):
    """The proof it learns: a few dozen CPU steps of stage 2 on the synthetic data cut the loss several-fold."""
    output = tmp_path / "learned"
    trainer = train(*training_argv(output, tiny_checkpoint, instructions, "--per_device_train_batch_size", "4",
                                   "--lr_scheduler_type", "constant", "--group_by_modality_length", "True", steps=40))
    curve = losses(trainer)
    first, last = curve[0], sum(curve[-5:]) / 5
    print(f"tiny stage-2 run, 40 steps: first loss {first:.3f}, mean of the last five {last:.3f}")
    assert len(curve) == 40 and last < 0.4 * first
    # The Trainer turns the cache off for training; the saved model must generate with it again.
    assert json.loads((output / "generation_config.json").read_text()).get("use_cache", True) is True
    saved_config = json.loads((output / "config.json").read_text())
    assert saved_config["use_cache"] is True and saved_config["text_config"].get("use_cache", True) is True
    # Reload where this package cannot be imported: only the saved remote code can serve the model.
    picture = instructions.parent / "images" / "synthetic-00000.png"
    logits_file = tmp_path / "logits.safetensors"
    result = run_as_user(Path(sys.executable), ["-c", RELOAD_AND_GENERATE, output, picture, logits_file],
                         cwd=tmp_path, timeout=300)
    module, generated = result.stdout.strip().splitlines()[-2:]
    assert module.startswith("transformers_modules")
    processor = AutoProcessor.from_pretrained(output)
    inputs = prompt(processor, Image.open(picture))
    with torch.no_grad():
        logits = trainer.model.eval()(**inputs).logits
    expected = trainer.model.generate(**inputs, max_new_tokens=8, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    assert torch.allclose(load_file(logits_file)["logits"], logits, atol=1e-5)
    # The reloaded model writes what the trained one writes, and that is text, not an immediate end of sequence.
    assert json.loads(generated) == expected.tolist()
    assert processor.decode(expected, skip_special_tokens=True).strip()


def prompt(processor, image):
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is in this image"}]}],
        add_generation_prompt=True,
    )
    return processor(images=image, text=text, return_tensors="pt")


RELOAD_AND_GENERATE = f"""
import sys, inspect, torch
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoModelForImageTextToText, AutoProcessor
folder, picture, logits_file = sys.argv[1:]
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
{inspect.getsource(prompt)}
inputs = prompt(processor, Image.open(picture))
with torch.no_grad():
    save_file({{"logits": model(**inputs).logits.contiguous()}}, logits_file)
    output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
print(type(model).__module__)
print(output[0, inputs["input_ids"].shape[1]:].tolist())
"""


def test_report_to_tensorboard_writes_the_losses(tmp_path, tiny_checkpoint, captions):
    """Progress goes where the Trainer sends it: with --report_to tensorboard, an event file holding the train loss."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(*training_argv(tmp_path / "stage1", tiny_checkpoint, captions, *STAGE1, "--report_to", "tensorboard"))
    event_files = list(tmp_path.rglob("events.out.tfevents.*"))
    assert len(event_files) == 1, event_files
    events = EventAccumulator(str(event_files[0].parent))
    events.Reload()
    assert len(events.Scalars("train/loss")) == 4  # one per step of the 4-step run (logging_steps 1)
