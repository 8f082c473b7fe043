"""The fast sampling core equals the straightforward per-level grid_sample core, in values and in gradients."""

import importlib.util
import inspect

import pytest
import torch
import torch.nn.functional as F
from transformers.models.deformable_detr.modeling_deformable_detr import MultiScaleDeformableAttention

from benchmarks.reference import per_level_deformable_sampling, use_per_level_core
from modeling_mmfuser_llava.deformable_attention import (
    DeformableSampling,
    MMFuserDeformableAttention,
    WeightedGather,
    deformable_sampling,
)

CUDA = pytest.param(
    "cuda",
    marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here)")],
)


def sampling_inputs(batch, grid, heads, head_dim, levels, points, dtype, device="cpu", seed=0):
    """Random value maps, locations reaching up to 30% beyond every border (zero padding), softmaxed weights."""
    generator = torch.Generator().manual_seed(seed)
    value = torch.randn(batch, levels * grid * grid, heads, head_dim, generator=generator, dtype=dtype)
    locations = torch.rand(batch, grid * grid, heads, levels, points, 2, generator=generator, dtype=dtype) * 1.6 - 0.3
    logits = torch.randn(batch, grid * grid, heads, levels * points, generator=generator, dtype=dtype)
    weights = logits.softmax(-1).view(batch, grid * grid, heads, levels, points)
    return [tensor.to(device).requires_grad_() for tensor in (value, locations, weights)]


def outputs_and_gradients(core, inputs, grid, upstream):
    output = core(*inputs, grid)
    return (output, *torch.autograd.grad(output, inputs, upstream))


FLOAT64, FLOAT32 = (torch.float64, 1e-10), (torch.float32, 2e-5)  # dtype, tolerance relative to the largest value
SIZES = {  # batch, grid, heads, head_dim, levels, points
    "cross-attention": (2, 6, 4, 8, 4, 4),
    "self-attention": (3, 5, 2, 16, 1, 3),
    "clip-l336": (1, 24, 16, 64, 4, 4),
}


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize(
    ("sizes", "dtype", "tolerance"),
    [
        pytest.param(SIZES[name], *dtype, id=f"{name}-{dtype[0]}".replace("torch.", ""))
        for name, dtype in [
            ("cross-attention", FLOAT64), ("cross-attention", FLOAT32), ("self-attention", FLOAT64),
            ("self-attention", FLOAT32), ("clip-l336", FLOAT32),
        ]
    ],
)
def test_fast_core_equals_per_level_reference(sizes, dtype, tolerance, device):
    batch, grid, heads, head_dim, levels, points = sizes
    inputs = sampling_inputs(*sizes, dtype, device)
    locations = inputs[1]
    outside = ((locations < 0) | (locations > 1)).any(-1).float().mean()
    assert 0.1 < outside < 0.9, "the inputs must exercise the zero padding"
    upstream = torch.randn(batch, grid * grid, heads * head_dim, dtype=dtype, device=device)
    fast = outputs_and_gradients(deformable_sampling, inputs, grid, upstream)
    reference = outputs_and_gradients(per_level_deformable_sampling, inputs, grid, upstream)
    for name, ours, theirs in zip(["output", "d value", "d locations", "d weights"], fast, reference):
        scale = theirs.abs().max().item()
        assert scale > 0, name
        torch.testing.assert_close(ours, theirs, rtol=0, atol=tolerance * scale, msg=lambda text: f"{name}: {text}")


def test_locations_outside_the_map_read_zeros():
    """A sample one pixel or more beyond the border contributes nothing, half a pixel beyond it half the edge value."""
    grid = 4
    value = torch.arange(1.0, 1.0 + grid * grid).view(1, grid * grid, 1, 1)
    x = torch.tensor([-1.0, -0.5, 0.0, 0.5, 3.5, 4.0, 4.5, 7.0]) / grid  # in pixel widths from the left border
    locations = torch.stack([x, torch.full_like(x, 0.5 / grid)], -1).view(1, len(x), 1, 1, 1, 2)
    weights = torch.ones(1, len(x), 1, 1, 1)
    sampled = deformable_sampling(value, locations, weights, grid).flatten()
    torch.testing.assert_close(sampled, torch.tensor([0.0, 0.0, 0.5, 1.0, 4.0, 2.0, 0.0, 0.0]))


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_bfloat16_attention_with_fast_core_equals_reference_core(device):
    """In a bf16 module (float32 core) the fast core gives the reference core's outputs and parameter gradients."""
    torch.manual_seed(0)
    attention = MMFuserDeformableAttention(hidden_size=32, num_levels=3, num_heads=4, num_points=4)
    with torch.no_grad():
        attention.sampling_offsets.bias.mul_(3.0)  # reach well beyond the borders
    attention = attention.to(device, torch.bfloat16)
    grid = 5
    query = torch.randn(2, grid * grid, 32, device=device, dtype=torch.bfloat16)
    keys_values = torch.randn(2, 3 * grid * grid, 32, device=device, dtype=torch.bfloat16)

    def run():
        output = attention(query, keys_values, grid)
        gradients = torch.autograd.grad(output.float().square().sum(), list(attention.parameters()))
        return output, gradients

    fast_output, fast_gradients = run()
    use_per_level_core(attention)
    reference_output, reference_gradients = run()
    assert fast_output.dtype == torch.bfloat16
    torch.testing.assert_close(fast_output, reference_output, rtol=2e-2, atol=2e-2)
    for ours, theirs in zip(fast_gradients, reference_gradients):
        torch.testing.assert_close(ours, theirs, rtol=2e-2, atol=2e-2 * theirs.abs().max().item())


def test_sampling_layer_can_take_the_hub_kernel():
    """The kernels hub replaces a layer's forward only if the signatures agree in count and kinds of parameters."""
    ours = list(inspect.signature(DeformableSampling.forward).parameters.values())
    detr = list(inspect.signature(MultiScaleDeformableAttention.forward).parameters.values())
    assert [(p.name, p.kind) for p in ours] == [(p.name, p.kind) for p in detr]


KERNELS_MISSING = importlib.util.find_spec("kernels") is None


@pytest.mark.skipif(KERNELS_MISSING, reason="the optional `kernels` package is not installed")
def test_sampling_layer_is_registered_with_the_kernels_hub():
    assert DeformableSampling.kernel_layer_name == "MultiScaleDeformableAttention"


@pytest.mark.cuda
@pytest.mark.skipif(
    not torch.cuda.is_available() or KERNELS_MISSING,
    reason="the kernels-hub CUDA kernel needs a CUDA GPU and the `kernels` package (neither is here)",
)
def test_cuda_hub_kernel_equals_reference(tiny):
    model = tiny[0].to("cuda")
    model.set_use_kernels(True)
    sampling = model.model.fuser.cross_attn.sampling
    assert sampling.forward.__func__ is not DeformableSampling.forward, "the hub kernel was not swapped in"
    inputs = sampling_inputs(2, 8, 4, 8, 4, 4, torch.float32, "cuda")
    value, locations, weights = inputs
    shapes = [(8, 8)] * 4
    spatial_shapes = torch.full((4, 2), 8, dtype=torch.long, device="cuda")
    starts = torch.arange(4, device="cuda") * 64
    upstream = torch.randn(2, 64, 32, device="cuda")
    kernel = outputs_and_gradients(
        lambda v, loc, w, grid: sampling(v, spatial_shapes, shapes, starts, loc, w, 2), inputs, 8, upstream
    )
    reference = outputs_and_gradients(per_level_deformable_sampling, inputs, 8, upstream)
    for ours, theirs in zip(kernel, reference):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4 * theirs.abs().max().item())


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_weighted_gather_has_embedding_bags_gradients(index_dtype):
    """The gather's own backward gives torch's `embedding_bag` gradients, rows hit many times or never included."""
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(50, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    rows = torch.randint(0, 40, (30, 12), generator=generator).to(index_dtype)  # rows 40-49 are never read
    weights = torch.rand(30, 12, generator=generator, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(30, 8, generator=generator, dtype=torch.float64)
    ours = WeightedGather.apply(table, rows, weights)
    theirs = F.embedding_bag(rows, table, per_sample_weights=weights, mode="sum")
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    our_gradients = torch.autograd.grad(ours, [table, weights], upstream)
    for mine, torchs in zip(our_gradients, torch.autograd.grad(theirs, [table, weights], upstream)):
        torch.testing.assert_close(mine, torchs, rtol=1e-12, atol=1e-12)
    assert our_gradients[0][40:].abs().max() == 0 < our_gradients[0][:40].abs().min()
