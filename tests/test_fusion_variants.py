"""The paper's alternative fusions (Table I), attention types (Table VII) and the block without self-attention
(Table VIII): config, shapes, initialisation, gradients, and loading through trust_remote_code where the package is
not importable."""

import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from conftest import assert_xavier_uniform, chat, perturb_fuser, plain_llava_with_same_weights
from isolated_venv import run_as_user
from modeling_mmfuser_llava import MMFuserLlavaConfig
from modeling_mmfuser_llava.fuser import MMFuserBlock
from modeling_mmfuser_llava.fusion_variants import (
    MMFuserAttentionVariantBlock,
    MMFuserAverage,
    MMFuserConcat,
    MMFuserGlobalAttention,
    MMFuserLinearSRAttention,
    MMFuserQueryLayer,
    MMFuserWeightedAverage,
)
from modeling_mmfuser_llava.hub_folder import save_hub_folder
from modeling_mmfuser_llava.tiny import build_tiny_model

# name -> (config overrides, fuser class)
VARIANTS = {
    "global": (dict(fuser_attention_type="global"), MMFuserAttentionVariantBlock),
    "linear_sra": (dict(fuser_attention_type="linear_sra", fuser_sra_pool_size=3), MMFuserAttentionVariantBlock),
    "concat": (dict(fuser_fusion="concat"), MMFuserConcat),
    "average": (dict(fuser_fusion="average"), MMFuserAverage),
    "weighted_average": (dict(fuser_fusion="weighted_average"), MMFuserWeightedAverage),
    "none": (dict(fuser_fusion="none"), MMFuserQueryLayer),
    "cross_attention_only": (dict(fuser_self_attention=False), MMFuserBlock),
    "global_cross_attention_only": (dict(fuser_attention_type="global", fuser_self_attention=False),
                                    MMFuserAttentionVariantBlock),
}
# Variants that start as the query layer exactly (the MMFuser block's zero gates, the one-hot weighted average), and
# the one that stays so.
STARTS_AS_QUERY = ("global", "linear_sra", "weighted_average", "none", "cross_attention_only",
                   "global_cross_attention_only")
# Variants that learn a fusion of the layers: all but the single-layer baseline.
FUSING = tuple(name for name in VARIANTS if name != "none")


@pytest.fixture(scope="module")
def variant_models():
    return {name: build_tiny_model(seed=0, **overrides) for name, (overrides, _) in VARIANTS.items()}


def random_maps(config: MMFuserLlavaConfig, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A query map and one key/value map per level, shaped as the vision tower's patch tokens."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, config.vision_grid_size**2, config.vision_config.hidden_size)
    maps = [torch.randn(shape, generator=generator) for _ in config.fuser_hidden_state_indices]
    return maps[-1], maps[:-1]


@pytest.mark.parametrize(
    ("settings", "field", "allowed"),
    [
        (dict(fuser_fusion="sum"), "fuser_fusion", "('mmfuser', 'concat', 'average', 'weighted_average', 'none')"),
        (dict(fuser_attention_type="sparse"), "fuser_attention_type", "('deformable', 'global', 'linear_sra')"),
        (dict(fuser_fusion="average", fuser_attention_type="global"), "fuser_attention_type", "fuser_fusion='mmfuser'"),
        (dict(fuser_attention_type="linear_sra", fuser_sra_pool_size=0), "fuser_sra_pool_size", "grid's side 24"),
        (dict(fuser_attention_type="linear_sra", fuser_sra_pool_size=25), "fuser_sra_pool_size", "grid's side 24"),
        (dict(fuser_fusion="concat", fuser_self_attention=False), "fuser_self_attention", "fuser_fusion='mmfuser'"),
        (dict(fuser_self_attention="no"), "fuser_self_attention", "expected bool"),
    ],
)
def test_invalid_variant_settings_name_the_field(settings, field, allowed):
    with pytest.raises(ValueError, match=field) as error:
        MMFuserLlavaConfig(**settings)
    assert allowed in str(error.value)


def test_default_is_the_deformable_mmfuser_block(tiny_pristine):
    model = tiny_pristine[0]
    assert (model.config.fuser_fusion, model.config.fuser_attention_type) == ("mmfuser", "deformable")
    assert type(model.model.fuser) is MMFuserBlock
    assert type(model.model.multi_modal_projector) is LlavaMultiModalProjector


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_shapes(variant_models, images, name):
    model, processor = variant_models[name]
    config = model.config
    assert type(model.model.fuser) is VARIANTS[name][1]
    query, keys_values = random_maps(config)
    fused = model.model.fuser(query, keys_values)
    layers = len(config.fuser_hidden_state_indices) if name == "concat" else 1
    assert fused.shape == (*query.shape[:2], config.vision_config.hidden_size * layers)
    assert model.model.multi_modal_projector.linear_1.in_features == fused.shape[-1] == config.fuser_output_size
    inputs = chat(processor, ["What is in this image?"] * 2, images[:2])
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (*inputs["input_ids"].shape, config.text_config.vocab_size)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["cross_attention_only", "global_cross_attention_only"])
def test_cross_attention_only_is_the_full_block_with_its_self_attention_gate_shut(variant_models, name):
    """Table VIII's middle row: `query + gamma1 * CrossAttn(...)`, which the full block with the same weights computes
    once `gamma2` is zero; the full block's self-attention, norm and gate are absent from the checkpoint."""
    cross_only = variant_models[name][0].model.fuser
    assert variant_models[name][0].config.fuser_self_attention is False
    overrides = {**VARIANTS[name][0], "fuser_self_attention": True}
    full = build_tiny_model(seed=0, **overrides)[0].model.fuser
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in full.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    own = {key: value for key, value in full.state_dict().items()
           if not key.startswith(("self_attn.", "norm1.")) and key != "gamma2"}
    assert set(cross_only.state_dict()) == set(own) and len(own) < len(full.state_dict())
    saved = {key: value.clone() for key, value in cross_only.state_dict().items()}
    try:
        cross_only.load_state_dict(own)
        query, keys_values = random_maps(variant_models[name][0].config)
        with torch.no_grad():
            with_self_attention = full(query, keys_values)
            full.gamma2.zero_()
            torch.testing.assert_close(cross_only(query, keys_values), full(query, keys_values), rtol=0, atol=0)
            assert not torch.allclose(cross_only(query, keys_values), with_self_attention)
    finally:
        cross_only.load_state_dict(saved)


def test_simple_fusions_compute_the_papers_formulas(variant_models):
    config = variant_models["concat"][0].config
    query, keys_values = random_maps(config)
    layers = [*keys_values, query]
    assert torch.equal(variant_models["concat"][0].model.fuser(query, keys_values), torch.cat(layers, -1))
    torch.testing.assert_close(variant_models["average"][0].model.fuser(query, keys_values), sum(layers) / len(layers))
    weighted = MMFuserWeightedAverage(len(layers))
    with torch.no_grad():
        weighted.layer_weights.copy_(torch.tensor([0.1, -0.2, 0.3, 0.4, 0.5]))
    expected = sum(weight * layer for weight, layer in zip(weighted.layer_weights.tolist(), layers))
    torch.testing.assert_close(weighted(query, keys_values), expected)


@pytest.mark.parametrize("name", STARTS_AS_QUERY)
def test_untrained_variant_returns_the_query_layer(variant_models, name):
    model = variant_models[name][0]
    query, keys_values = random_maps(model.config)
    with torch.no_grad():
        assert torch.equal(model.model.fuser(query, keys_values), query)


def test_single_layer_baseline_is_a_plain_llava(variant_models, images):
    """`fuser_fusion="none"` computes exactly what a stock Llava with the same weights computes, and selects only
    the query layer's features (the key/value layers do not reach the output)."""
    model, processor = variant_models["none"]
    inputs = chat(processor, ["What is in this image?", "Describe the picture"], images[:2])
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, plain_llava_with_same_weights(model)(**inputs).logits)
    query, keys_values = random_maps(model.config)
    assert model.model.fuser(query, keys_values) is query


@pytest.mark.parametrize("name", ["global", "linear_sra"])
def test_attention_variant_projections_start_as_the_deformable_ones(variant_models, name):
    """Xavier-uniform weights and zero biases, as the deformable attention's value and output projections."""
    fuser = variant_models[name][0].model.fuser
    for attention in (fuser.cross_attn, fuser.self_attn):
        for projection in attention.projections():
            assert torch.count_nonzero(projection.bias) == 0
            assert_xavier_uniform(projection.weight)


@pytest.mark.parametrize("name", ["concat", "average"])
def test_parameter_free_fusions_differ_from_the_query_layer(variant_models, name):
    """Documented: these two cannot start as the query layer (no parameters to make them so)."""
    model = variant_models[name][0]
    query, keys_values = random_maps(model.config)
    assert list(model.model.fuser.parameters()) == []
    fused = model.model.fuser(query, keys_values)
    assert fused.shape != query.shape or not torch.allclose(fused, query)


def test_attention_variants_keep_the_blocks_parameter_names(tiny_pristine, variant_models):
    deformable = set(tiny_pristine[0].model.fuser.state_dict())
    shared = {"gamma1", "gamma2", "query_norm.weight", "query_norm.bias", "feat_norm.weight", "feat_norm.bias",
              "norm1.weight", "norm1.bias"}
    shared |= {f"{attention}.{proj}.{kind}" for attention in ("cross_attn", "self_attn")
               for proj in ("value_proj", "output_proj") for kind in ("weight", "bias")}
    assert shared <= deformable
    for name in ("global", "linear_sra"):
        keys = set(variant_models[name][0].model.fuser.state_dict())
        assert shared <= keys, name
        assert not any("sampling_offsets" in key or "attention_weights" in key for key in keys), name


def test_global_attention_is_standard_multi_head_attention():
    """Checked against torch's reference multi-head attention with the same weights."""
    torch.manual_seed(0)
    attention = MMFuserGlobalAttention(hidden_size=16, num_heads=4)
    query, keys_values = torch.randn(2, 9, 16), torch.randn(2, 27, 16)
    projections = [attention.query_proj, attention.key_proj, attention.value_proj]
    expected, _ = F.multi_head_attention_forward(
        query.transpose(0, 1), keys_values.transpose(0, 1), keys_values.transpose(0, 1), 16, 4,
        in_proj_weight=None, in_proj_bias=torch.cat([p.bias for p in projections]), bias_k=None, bias_v=None,
        add_zero_attn=False, dropout_p=0.0, out_proj_weight=attention.output_proj.weight,
        out_proj_bias=attention.output_proj.bias, need_weights=False, use_separate_proj_weight=True,
        q_proj_weight=projections[0].weight, k_proj_weight=projections[1].weight, v_proj_weight=projections[2].weight,
    )
    torch.testing.assert_close(attention(query, keys_values, grid_size=3), expected.transpose(0, 1))


def test_linear_sra_pools_each_level_of_each_image_separately():
    torch.manual_seed(0)
    grid, levels, pool, hidden = 6, 3, 2, 8
    attention = MMFuserLinearSRAttention(hidden_size=hidden, num_heads=2, pool_size=pool, layer_norm_eps=1e-6)
    keys_values = torch.randn(2, levels * grid * grid, hidden)
    pooled = [
        F.adaptive_avg_pool2d(level.view(grid, grid, hidden).permute(2, 0, 1), pool).flatten(1).T
        for image in keys_values for level in image.split(grid * grid)
    ]
    pooled = torch.stack(pooled).view(2, levels * pool**2, hidden)
    expected = F.gelu(attention.reduction_norm(attention.reduction(pooled)))
    reduced = attention.reduce_keys_values(keys_values, grid)
    assert reduced.shape == (2, levels * pool**2, hidden)
    torch.testing.assert_close(reduced, expected)
    query = torch.randn(2, grid * grid, hidden)
    batched = attention(query, keys_values, grid)
    torch.testing.assert_close(batched[1:], attention(query[1:], keys_values[1:], grid))


@pytest.mark.parametrize("name", FUSING)
def test_gradients_reach_every_layer_and_parameter(variant_models, name):
    """With trained-looking parameters, the loss depends on every selected layer and every fuser parameter."""
    model = variant_models[name][0]
    fuser = model.model.fuser
    saved = {key: value.clone() for key, value in fuser.state_dict().items()}
    perturb_fuser(model)
    try:
        query, keys_values = random_maps(model.config)
        maps = [layer.requires_grad_() for layer in [*keys_values, query]]
        model.model.multi_modal_projector(fuser(maps[-1], maps[:-1])).square().mean().backward()
        for index, layer in enumerate(maps):
            assert layer.grad is not None and layer.grad.abs().sum() > 0, f"no gradient to selected layer {index}"
        for parameter_name, parameter in fuser.named_parameters():
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, parameter_name
    finally:
        fuser.load_state_dict(saved)
        model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", [name for name in STARTS_AS_QUERY if name in FUSING])
def test_untrained_variant_can_start_learning(variant_models, name):
    """At initialisation the gates (or the layer weights) receive a gradient, so training moves away from the query."""
    model = variant_models[name][0]
    fuser = model.model.fuser
    query, keys_values = random_maps(model.config)
    model.model.multi_modal_projector(fuser(query, keys_values)).square().mean().backward()
    try:
        gates = [fuser.gamma1] if name != "weighted_average" else [fuser.layer_weights]
        assert all(gate.grad.abs().sum() > 0 for gate in gates)
    finally:
        model.zero_grad(set_to_none=True)


REMOTE_LOADER = textwrap.dedent(
    """
    import importlib.abc
    import sys

    class RefuseProjectPackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "modeling_mmfuser_llava":
                raise ModuleNotFoundError(f"{name} must not be importable here")

    sys.meta_path.insert(0, RefuseProjectPackage())
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForImageTextToText

    inputs = load_file("inputs.safetensors")
    outputs = {}
    for folder in sys.argv[1:]:
        model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(model.model.fuser).__module__.startswith("transformers_modules."), type(model.model.fuser)
        levels = len(model.config.fuser_key_value_layers)
        with torch.no_grad():
            outputs[f"{folder}/features"] = torch.stack(
                model.model.get_image_features(inputs["pixel_values"]).pooler_output
            )
            # cloned: the single-layer baseline returns its input itself, which safetensors would refuse to save twice
            fused = model.model.fuser(inputs["query"], list(inputs["keys_values"][:levels]))
            outputs[f"{folder}/fused"] = fused.clone()
        outputs.update({f"{folder}/{key}": value for key, value in model.model.fuser.state_dict().items()})
    save_file(outputs, "outputs.safetensors")
    """
)


@pytest.fixture(scope="module")
def remote_loaded(tmp_path_factory, variant_models, images):
    """Every variant saved as a Hub folder (trained-looking fuser), plus a copy without fuser weights for the variants
    that start as the query layer, then all loaded in ONE subprocess that cannot import this package."""
    root = tmp_path_factory.mktemp("remote")
    processor = variant_models["concat"][1]
    config = variant_models["concat"][0].config
    query, keys_values = random_maps(config)
    pixel_values = chat(processor, ["?"] * 2, images[:2])["pixel_values"]
    save_file({"pixel_values": pixel_values, "query": query, "keys_values": torch.stack(keys_values)},
              root / "inputs.safetensors")
    expected = {}
    for name in VARIANTS:
        model, processor = build_tiny_model(seed=0, **VARIANTS[name][0])
        perturb_fuser(model, seed=1)
        save_hub_folder(model, processor, root / f"hub_{name}")
        with torch.no_grad():
            expected[name] = (torch.stack(model.model.get_image_features(pixel_values).pooler_output),
                              model.model.fuser(query, keys_values), model.model.fuser.state_dict())
    for name in STARTS_AS_QUERY:
        stripped = root / f"hub_{name}_without_fuser"
        save_hub_folder(*variant_models[name], stripped)
        weights = load_file(stripped / "model.safetensors")
        save_file({k: v for k, v in weights.items() if ".fuser." not in k}, stripped / "model.safetensors",
                  metadata={"format": "pt"})
    folders = [*(f"hub_{name}" for name in VARIANTS), *(f"hub_{name}_without_fuser" for name in STARTS_AS_QUERY)]
    run_as_user(Path(sys.executable), ["-c", REMOTE_LOADER, *folders], cwd=root, timeout=300,
                HF_MODULES_CACHE=str(root / "modules"))
    return expected, load_file(root / "outputs.safetensors"), query


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_loads_through_trust_remote_code(remote_loaded, name):
    expected, loaded, _ = remote_loaded
    features, fused, state = expected[name]
    for key, value in state.items():
        assert torch.equal(loaded[f"hub_{name}/{key}"], value), key
    torch.testing.assert_close(loaded[f"hub_{name}/fused"], fused)
    torch.testing.assert_close(loaded[f"hub_{name}/features"], features)


@pytest.mark.parametrize("name", STARTS_AS_QUERY)
def test_remote_variant_without_fuser_weights_starts_as_the_query_layer(remote_loaded, name):
    """A checkpoint lacking the fuser (e.g. LLaVA-1.5's) gets the variant's initialisation through from_pretrained."""
    _, loaded, query = remote_loaded
    assert torch.equal(loaded[f"hub_{name}_without_fuser/fused"], query)
