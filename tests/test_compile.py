"""torch.compile captures the fuser and the whole forward as single graphs (`_can_compile_fullgraph` is truthful).

The graphs are compiled with the "eager"/"aot_eager" backends: they check capture without a graph break (and, for
aot_eager, the traced backward) in seconds. Inductor's generated code, which takes minutes to build on a small CPU, is
tested in tests/test_integration_inductor.py (a training step with images, values and gradients against eager).
"""

import copy

import torch
from transformers import CLIPVisionConfig

from modeling_mmfuser_llava import MMFuserLlavaForConditionalGeneration
from modeling_mmfuser_llava.tiny import build_tiny_model

from conftest import chat, perturb_fuser


def test_fuser_compiles_as_one_graph_with_the_same_values_and_gradients(tiny):
    fuser = tiny[0].model.fuser
    generator = torch.Generator().manual_seed(0)
    query, *keys_values = torch.randn(5, 2, fuser.grid_size**2, 32, generator=generator).unbind(0)
    query.requires_grad_()
    compiled = torch.compile(fuser, fullgraph=True, backend="aot_eager")
    results = []
    for block in (fuser, compiled):
        output = block(query, keys_values)
        results.append((output, *torch.autograd.grad(output.square().sum(), [query, *fuser.parameters()])))
    for eager, graph in zip(*results):
        torch.testing.assert_close(graph, eager, rtol=1e-5, atol=1e-5)


def test_forward_with_images_compiles_as_one_graph(images):
    """The prefill forward (vision tower, fuser, projector, language model) has no graph break."""
    assert MMFuserLlavaForConditionalGeneration._can_compile_fullgraph
    # A shallower vision tower than the tiny default keeps tracing short; the fuser still takes four levels.
    shallow = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=4, image_size=32, patch_size=4
    )
    model, processor = build_tiny_model(vision_config=shallow, fuser_key_value_layers=(1, 2, 3, 4))
    perturb_fuser(model)
    inputs = chat(processor, ["What is in this image?", "Colour?"], images[:2])
    with torch.no_grad():
        eager = model(**inputs).logits
        graph = torch.compile(copy.deepcopy(model), fullgraph=True, backend="eager")(**inputs).logits
    torch.testing.assert_close(graph, eager)
