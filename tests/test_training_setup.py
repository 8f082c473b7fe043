"""Model setup for training: building from a base LLM + CLIP or a Llava checkpoint, freezing per stage, optimizer
groups, the stage-1 file, and the original argument names."""

import copy

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPVisionModel, LlamaForCausalLM, LlavaConfig, LlavaForConditionalGeneration

from conftest import chat
from modeling_mmfuser_llava.processing import IMAGE_TOKEN, PAD_TOKEN
from modeling_mmfuser_llava.training.arguments import ModelArguments, TrainingArguments, parse_arguments
from modeling_mmfuser_llava.training.data import ModalityLengthGroupedSampler
from modeling_mmfuser_llava.training.model_setup import (
    load_mm_adapter,
    load_model_and_processor,
    parameter_counts,
    save_mm_adapter,
    set_trainable_parts,
)
from modeling_mmfuser_llava.training.trainer import MMFuserTrainer
from training_support import (  # noqa: F401  (fixtures)
    base_parts,
    instructions,
    one_thread,
    tiny_checkpoint,
    train,
    training_argv,
)


def test_fresh_model_from_base_llm_and_clip(base_parts, images):  # noqa: F811
    llm_folder, clip_folder = base_parts
    model, processor = load_model_and_processor(
        ModelArguments(model_name_or_path=str(llm_folder), vision_tower=str(clip_folder))
    )
    llm, clip = LlamaForCausalLM.from_pretrained(llm_folder), CLIPVisionModel.from_pretrained(clip_folder)
    old_vocab = llm.config.vocab_size
    # The tokenizer gained <image> and <pad>; the embeddings grew, new rows at the mean of the old ones.
    tokenizer = processor.tokenizer
    assert len(tokenizer) == old_vocab + 2 and {IMAGE_TOKEN, PAD_TOKEN} <= set(tokenizer.get_vocab())
    embeddings = model.get_input_embeddings().weight
    assert embeddings.shape[0] == old_vocab + 2 == model.config.text_config.vocab_size
    assert torch.allclose(embeddings[old_vocab:], llm.get_input_embeddings().weight.mean(0).expand(2, -1))
    assert model.config.image_token_index == tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    # The loaded parts are the checkpoints' weights.
    assert torch.equal(embeddings[:old_vocab], llm.get_input_embeddings().weight)
    assert torch.equal(model.lm_head.weight[:old_vocab], llm.lm_head.weight)
    for name, value in llm.model.state_dict().items():
        if name == "embed_tokens.weight":
            continue  # resized, compared above
        assert torch.equal(model.model.language_model.state_dict()[name], value), name
    for name, value in clip.state_dict().items():
        assert torch.equal(model.model.vision_tower.state_dict()[name], value), name
    # The fuser starts at the original initialisation: zero gates, so it passes the query layer through.
    assert model.model.fuser.gamma1.abs().sum() == 0 and model.model.fuser.gamma2.abs().sum() == 0
    assert model.config.fuser_key_value_layers == (-22, -17, -12, -7) and model.config.vision_feature_layer == -2
    inputs = chat(processor, ["what is in this image"], images[:1])
    assert (inputs["input_ids"] == model.config.image_token_index).sum() == model.config.image_seq_length == 64
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()


def test_fresh_model_takes_the_layer_flag_and_the_paper_ablations(base_parts, images):  # noqa: F811
    llm_folder, clip_folder = base_parts
    model, _ = load_model_and_processor(
        ModelArguments(str(llm_folder), vision_tower=str(clip_folder), mm_vision_select_layer="list-20/-10/-1")
    )
    assert model.config.fuser_key_value_layers == (-20, -10) and model.config.vision_feature_layer == -1
    assert model.model.fuser.cross_attn.num_levels == 2
    # Table I's concatenation widens the projector; Table VII's global attention replaces the deformable one.
    concat, processor = load_model_and_processor(
        ModelArguments(str(llm_folder), vision_tower=str(clip_folder), fuser_fusion="concat")
    )
    assert concat.model.multi_modal_projector.linear_1.in_features == 5 * concat.config.vision_config.hidden_size
    global_attention, _ = load_model_and_processor(
        ModelArguments(str(llm_folder), vision_tower=str(clip_folder), fuser_attention_type="global")
    )
    assert type(global_attention.model.fuser).__name__ == "MMFuserAttentionVariantBlock"
    assert global_attention.model.fuser.gamma1.abs().sum() == 0
    sized, _ = load_model_and_processor(
        ModelArguments(str(llm_folder), vision_tower=str(clip_folder), fuser_num_heads=2, fuser_num_points=3)
    )
    assert (sized.config.fuser_num_heads, sized.config.fuser_num_points) == (2, 3)
    assert (sized.model.fuser.cross_attn.num_heads, sized.model.fuser.self_attn.num_points) == (2, 3)
    inputs = chat(processor, ["what is in this image"], images[:1])
    with torch.no_grad():
        assert torch.isfinite(concat(**inputs).logits).all() and torch.isfinite(global_attention(**inputs).logits).all()


def test_base_llm_without_vision_tower_is_refused(base_parts):  # noqa: F811
    with pytest.raises(ValueError, match="needs --vision_tower"):
        load_model_and_processor(ModelArguments(str(base_parts[0])))


@pytest.mark.parametrize("fusion", [None, "concat", "weighted_average"])
def test_llava_checkpoint_becomes_an_mmfuser_that_starts_identical(tmp_path, tiny_pristine, images, fusion):
    """From a Llava checkpoint: its tower, projector and LLM, a new fuser that starts as the query layer: the same
    logits. Concatenation's wider projector starts as the Llava's, reading only the query layer's columns."""
    mmfuser, processor = tiny_pristine
    config = LlavaConfig(
        vision_config=mmfuser.config.vision_config,
        text_config=mmfuser.config.text_config,
        image_token_index=mmfuser.config.image_token_index,
        image_seq_length=mmfuser.config.image_seq_length,
    )
    torch.manual_seed(0)
    llava = LlavaForConditionalGeneration(config).eval()
    llava.save_pretrained(tmp_path / "llava")
    processor.tokenizer.save_pretrained(tmp_path / "llava")
    model, _ = load_model_and_processor(ModelArguments(str(tmp_path / "llava"), fuser_fusion=fusion))
    assert model.config.fuser_fusion == (fusion or "mmfuser")
    inputs = chat(processor, ["what is in this image"], images[:1])
    with torch.no_grad():
        assert torch.allclose(model.eval()(**inputs).logits, llava(**inputs).logits, atol=1e-5)


@pytest.mark.parametrize(
    "flags",
    [{"mm_vision_select_layer": "list-3/-2"}, {"fuser_fusion": "average"}, {"fuser_attention_type": "global"},
     {"fuser_num_heads": 2}],
)
def test_mmfuser_checkpoint_refuses_flags_for_another_fuser(tiny_checkpoint, flags):
    with pytest.raises(ValueError, match="the checkpoint's fuser differs from the flags"):
        load_model_and_processor(ModelArguments(str(tiny_checkpoint), **flags))


def trainable_parts(model) -> set[str]:
    return {part for part, (trainable, _) in parameter_counts(model).items() if trainable}


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"tune_mm_mlp_adapter": True}, {"fuser", "projector"}),  # stage 1
        ({"tune_mm_mlp_adapter": False}, {"fuser", "projector", "language_model"}),  # stage 2
        ({"tune_mm_mlp_adapter": False, "freeze_backbone": True}, {"fuser", "projector"}),
        ({"tune_mm_mlp_adapter": False, "freeze_mm_mlp_adapter": True}, {"language_model"}),
        ({"tune_mm_mlp_adapter": True, "unfreeze_vision_tower": True}, {"fuser", "projector", "vision_tower"}),
    ],
)
def test_trainable_parts_per_stage(tiny_pristine, flags, expected):
    model = copy.deepcopy(tiny_pristine[0])
    set_trainable_parts(model, **flags)
    assert trainable_parts(model) == expected
    counts = parameter_counts(model)
    assert all(counts[part][0] == counts[part][1] for part in expected)  # a trained part trains in full


def test_fuser_learning_rate_has_its_own_groups(tmp_path, tiny_pristine):
    """--ms_cross_attn_lr: the fuser (decay and no-decay) at its rate, the rest (the projector) at --learning_rate."""
    model = copy.deepcopy(tiny_pristine[0])
    set_trainable_parts(model, tune_mm_mlp_adapter=True)
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, ms_cross_attn_lr=1e-4, weight_decay=0.1,
                             use_cpu=True)
    optimizer = MMFuserTrainer(model=model, args=args).create_optimizer()
    names = {id(p): name for name, p in model.named_parameters()}
    by_rate = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            by_rate.setdefault((group["lr"], group["weight_decay"]), set()).add(names[id(p)])
    fuser = {name for name, p in model.named_parameters() if name.startswith("model.fuser.")}
    projector = {name for name, p in model.named_parameters() if name.startswith("model.multi_modal_projector.")}
    assert by_rate[(1e-4, 0.1)] | by_rate[(1e-4, 0.0)] == fuser
    assert by_rate[(1e-3, 0.1)] | by_rate[(1e-3, 0.0)] == projector
    assert "model.fuser.cross_attn.value_proj.weight" in by_rate[(1e-4, 0.1)]
    assert "model.fuser.norm1.weight" in by_rate[(1e-4, 0.0)]


def test_a_text_only_batch_gives_the_vision_side_zero_gradients(tmp_path, tiny):
    """As the original LLaVA's zero image does: after a training step on a batch without images the fuser and
    projector hold zero gradients, not None (torch's AdamW skips None where DeepSpeed's Adam applies zeros, and the
    engines parted); the loss and the language model's gradients are those of the model's plain forward."""
    model, _ = tiny
    set_trainable_parts(model, tune_mm_mlp_adapter=False)
    reference = copy.deepcopy(model).train()
    ids = torch.tensor([[1, 5, 6, 7, 8, 9]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids, dtype=torch.bool), "labels": ids}
    reference_loss = reference(**batch).loss
    reference_loss.backward()
    assert all(parameter.grad is None for parameter in reference.model.fuser.parameters())  # the plain forward
    trainer = MMFuserTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True))
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    assert loss.item() == reference_loss.item()
    mm_adapter = [*model.model.fuser.named_parameters(), *model.model.multi_modal_projector.named_parameters()]
    assert all(parameter.grad is not None and not parameter.grad.any() for _, parameter in mm_adapter)
    assert all(parameter.grad is None for parameter in model.model.vision_tower.parameters())  # frozen
    reference_grads = dict(reference.model.language_model.named_parameters())
    for name, parameter in model.model.language_model.named_parameters():
        torch.testing.assert_close(parameter.grad, reference_grads[name].grad, rtol=0, atol=0)


def modules_run(trainer: MMFuserTrainer, batch: dict) -> list[str]:
    """The names of the modules a training loss and its backward run, in the order they start (what ZeRO-3 traces)."""
    model = trainer.model
    order = []
    handles = [module.register_forward_pre_hook(lambda module, args, name=name: order.append(name))
               for name, module in model.named_modules()]
    try:
        trainer.compute_loss(model, dict(batch)).backward()
    finally:
        for handle in handles:
            handle.remove()
    return order


@pytest.mark.parametrize("vision_side_trains", [True, False], ids=["stage2", "frozen-vision-side"])
def test_a_text_only_batch_runs_the_modules_of_an_image_batch_in_their_order(tmp_path, tiny, images,
                                                                             vision_side_trains):
    """ZeRO-3 and FSDP gather each module's weights as it runs, so a process holding only text must run the same
    modules in the same order as one holding pictures (else the run stops at its first mixed step), also when no
    vision-side weight trains (LoRA with the fuser and projector frozen)."""
    model, processor = tiny
    set_trainable_parts(model, tune_mm_mlp_adapter=False, freeze_mm_mlp_adapter=not vision_side_trains)
    trainer = MMFuserTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True))
    trainer.model.train()
    with_image = dict(chat(processor, ["what is in this image"], images[:1]))
    with_image["labels"] = with_image["input_ids"]
    ids = torch.tensor([[1, 5, 6, 7, 8, 9]])
    text_only = {"input_ids": ids, "attention_mask": torch.ones_like(ids, dtype=torch.bool), "labels": ids}
    image_order = modules_run(trainer, with_image)
    assert "model.vision_tower" in image_order and "model.fuser" in image_order
    assert modules_run(trainer, text_only) == image_order


@pytest.mark.parametrize("grouped", [True, False])
def test_group_by_modality_length_gives_batches_of_one_modality(tmp_path, tiny_checkpoint, instructions, grouped):
    """With the flag the Trainer draws through ModalityLengthGroupedSampler: every batch holds only samples with an
    image or only text-only ones. Without it the default random order mixes them on this data (4 of 32 text-only)."""
    flags = ("--group_by_modality_length", str(grouped))
    trainer = train(*training_argv(tmp_path, tiny_checkpoint, instructions, *flags, steps=1))
    loader = trainer.get_train_dataloader()
    assert isinstance(loader.batch_sampler.sampler, ModalityLengthGroupedSampler) is grouped
    image_token = trainer.model.config.image_token_index
    batch_kinds = [set((batch["input_ids"] == image_token).any(dim=1).tolist()) for batch in loader]  # has image?
    if grouped:
        assert {False} in batch_kinds and all(len(kinds) == 1 for kinds in batch_kinds)
    else:
        assert any(len(kinds) == 2 for kinds in batch_kinds)


def test_stage1_file_round_trip_and_mismatch(tmp_path, tiny_pristine):
    model = copy.deepcopy(tiny_pristine[0])
    path = save_mm_adapter(model.state_dict(), tmp_path / "mm_projector.safetensors")
    saved = load_file(path)
    assert saved and all(key.startswith(("model.fuser.", "model.multi_modal_projector.")) for key in saved)
    assert {"model.fuser.gamma1", "model.multi_modal_projector.linear_2.weight"} <= set(saved)
    other = copy.deepcopy(tiny_pristine[0])
    load_mm_adapter(other, path)
    assert all(torch.equal(other.state_dict()[key], value) for key, value in saved.items())
    save_file({**saved, "model.fuser.gamma1": torch.zeros(3)}, tmp_path / "reshaped.safetensors")
    with pytest.raises(ValueError, match="other shapes for.*model.fuser.gamma1"):
        load_mm_adapter(other, tmp_path / "reshaped.safetensors")
    del saved["model.fuser.gamma1"]
    save_file(saved, tmp_path / "broken.safetensors")
    with pytest.raises(ValueError, match="missing.*model.fuser.gamma1"):
        load_mm_adapter(other, tmp_path / "broken.safetensors")


ORIGINAL_STAGE1_FLAGS = (  # scripts/mmfuser/pretrain_13b.sh, minus DeepSpeed (not installed here)
    "--model_name_or_path lmsys/vicuna-13b-v1.5 --version plain --data_path blip_laion_cc_sbu_558k.json "
    "--image_folder images --vision_tower openai/clip-vit-large-patch14-336 --mm_projector_type mlp2x_gelu "
    "--tune_mm_mlp_adapter True --mm_vision_select_layer list-22/-17/-12/-7/-2 --mm_use_im_start_end False "
    "--mm_use_im_patch_token False --bf16 True --output_dir out --num_train_epochs 1 "
    "--per_device_train_batch_size 32 --per_device_eval_batch_size 4 --gradient_accumulation_steps 1 "
    "--save_strategy steps --save_steps 24000 --save_total_limit 1 --learning_rate 1e-3 --ms_cross_attn_lr 1e-4 "
    "--weight_decay 0. --warmup_ratio 0.03 --lr_scheduler_type cosine --logging_steps 1 --model_max_length 2048 "
    "--gradient_checkpointing True --dataloader_num_workers 4 --lazy_preprocess True --use_cpu True"
).split()


def test_original_script_flags_parse():
    model_args, data_args, training_args = parse_arguments(ORIGINAL_STAGE1_FLAGS)
    assert model_args.version == "plain" and model_args.tune_mm_mlp_adapter
    assert model_args.mm_vision_select_layer == "list-22/-17/-12/-7/-2"
    assert data_args.data_path == "blip_laion_cc_sbu_558k.json"
    assert training_args.ms_cross_attn_lr == 1e-4 and training_args.learning_rate == 1e-3
    assert training_args.warmup_steps == 0.03  # the original warmup_ratio, as transformers 5 spells it
    assert training_args.model_max_length == 2048 and training_args.gradient_checkpointing
    assert training_args.report_to == []  # nothing is reported unless asked


def test_config_file_with_overrides(tmp_path):
    config = tmp_path / "stage.yaml"
    config.write_text("model_name_or_path: base\ndata_path: data.json\noutput_dir: out\nlearning_rate: 1.0e-3\n"
                      "use_cpu: true\n")
    _, _, training_args = parse_arguments([str(config), "--learning_rate", "2e-5"])
    assert training_args.learning_rate == 2e-5 and training_args.output_dir == "out"
    config.write_text("model_name_or_path: base\nlearnin_rate: 1\n")
    with pytest.raises(ValueError, match="unknown arguments: learnin_rate"):
        parse_arguments([str(config)])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ("--mm_use_im_start_end True", "mm_use_im_start_end True is not supported"),
        ("--bits 4", "add --lora_enable True"),
        ("--lora_enable True --tune_mm_mlp_adapter True", "contradicts --tune_mm_mlp_adapter"),
        ("--mm_vision_select_layer -2", "list<kv>"),
        ("--warmup_ratio 0.03 --warmup_steps 10", "not both"),
    ],
)
def test_contradictory_flags_are_refused(flags, message):
    with pytest.raises(ValueError, match=message):
        parse_arguments(["--model_name_or_path", "m", "--data_path", "d", "--output_dir", "o", "--use_cpu", "True",
                         *flags.split()])
