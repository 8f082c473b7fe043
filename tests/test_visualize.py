"""`mmfuser-llava visualize`: the figure's panels are the model's own tensors, and the command writes the PNG."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import perturb_fuser
from modeling_mmfuser_llava.cli import main
from modeling_mmfuser_llava.hub_folder import save_hub_folder
from modeling_mmfuser_llava.visualize import (
    compute_fuser_feature_maps,
    plot_fuser_feature_maps,
    reduce_tokens,
    visualize,
)

GRID = 8  # the tiny model: 32 px images, 4 px patches


@pytest.fixture(scope="module")
def picture(images) -> Image.Image:
    return images[0]


def fuser_inputs_and_output(model, pixel_values):
    """The fuser's query, key/value maps and output as the model's own forward pass (get_image_features) gives them."""
    seen = {}

    def record(module, args, output):
        seen.update(query=args[0], keys_values=args[1], fused=output)

    handle = model.model.fuser.register_forward_hook(record)
    try:
        with torch.no_grad():
            model.model.get_image_features(pixel_values)
    finally:
        handle.remove()
    return seen


def channel_norm_map(features: torch.Tensor) -> np.ndarray:
    return features[0].norm(dim=-1).view(GRID, GRID).numpy()


def test_maps_are_the_models_tensors(tiny, picture):
    model, processor = tiny
    maps = compute_fuser_feature_maps(model, processor, picture)
    pixel_values = processor.image_processor(picture, return_tensors="pt")["pixel_values"]
    seen = fuser_inputs_and_output(model, pixel_values)
    np.testing.assert_allclose(maps.query_map, channel_norm_map(seen["query"]), rtol=1e-5)
    key_value_mean = torch.stack(seen["keys_values"]).mean(0)
    np.testing.assert_allclose(maps.key_value_map, channel_norm_map(key_value_mean), rtol=1e-5)
    np.testing.assert_allclose(maps.fused_map, channel_norm_map(seen["fused"]), rtol=1e-5)
    assert not np.allclose(maps.fused_map, maps.query_map)  # the perturbed fuser changes its query
    assert (maps.key_value_layers, maps.query_layer) == ([3, 8, 13, 18], 23)
    mean, std = (torch.tensor(values).view(3, 1, 1) for values in (processor.image_processor.image_mean,
                                                                   processor.image_processor.image_std))
    np.testing.assert_allclose(maps.image, (pixel_values[0] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy(),
                               atol=1e-6)


def test_layer_similarity_is_cosine_to_the_final_layer(tiny, picture):
    model, processor = tiny
    maps = compute_fuser_feature_maps(model, processor, picture)
    pixel_values = processor.image_processor(picture, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        hidden_states = model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
    expected = [F.cosine_similarity(layer[0, 1:], hidden_states[-1][0, 1:], dim=-1).mean().item()
                for layer in hidden_states]
    assert len(expected) == 25
    np.testing.assert_allclose(maps.layer_similarity, expected, rtol=1e-5)
    assert maps.layer_similarity[-1] == pytest.approx(1.0)


def test_output_map_follows_the_fuser(tiny_pristine, picture):
    """An untrained fuser returns its query (zero gates); opening the gates changes the output map, and only it."""
    model, processor = tiny_pristine
    untrained = compute_fuser_feature_maps(model, processor, picture)
    np.testing.assert_array_equal(untrained.fused_map, untrained.query_map)
    opened = copy.deepcopy(model)
    perturb_fuser(opened)
    changed = compute_fuser_feature_maps(opened, processor, picture)
    np.testing.assert_array_equal(changed.query_map, untrained.query_map)
    np.testing.assert_array_equal(changed.key_value_map, untrained.key_value_map)
    assert np.abs(changed.fused_map - untrained.fused_map).max() > 1e-3


def test_principal_component_reduction():
    """The map is the projection on the covariance's top eigenvector, signed to grow with the token norm."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(GRID * GRID, 16, generator=generator) * torch.linspace(0.1, 3, 16)
    values = reduce_tokens(features, GRID, "pca").reshape(-1)
    centred = features - features.mean(0)
    top = torch.linalg.eigh(centred.T @ centred).eigenvectors[:, -1]
    np.testing.assert_allclose(np.abs(values), (centred @ top).abs().numpy(), rtol=1e-4, atol=1e-5)
    assert np.dot(values, features.norm(dim=-1).numpy() - features.norm(dim=-1).mean().item()) > 0
    with pytest.raises(ValueError, match="reduction"):
        reduce_tokens(features, GRID, "max")


def test_plot_draws_the_returned_arrays(tiny, picture):
    model, processor = tiny
    maps = compute_fuser_feature_maps(model, processor, picture, reduction="pca")
    figure = plot_fuser_feature_maps(maps)
    drawn = [axes.images[0].get_array() for axes in figure.axes if axes.images]
    for array, expected in zip(drawn, [maps.image, maps.key_value_map, maps.query_map, maps.fused_map], strict=True):
        np.testing.assert_array_equal(np.asarray(array), expected)
    chart = next(axes for axes in figure.axes if axes.lines)
    np.testing.assert_array_equal(chart.lines[0].get_ydata(), maps.layer_similarity)


def test_visualize_command_writes_the_png(tmp_path, tiny, picture, capsys):
    """End to end: a Hub folder loaded through trust_remote_code, the CLI, a PNG of the figure's size."""
    model, processor = tiny
    folder = save_hub_folder(model, processor, tmp_path / "hub")
    image_path = tmp_path / "picture.png"
    picture.save(image_path)
    output = tmp_path / "figures" / "maps.png"
    assert main(["visualize", "--model", str(folder), "--image", str(image_path), "--output", str(output)]) == 0
    with Image.open(output) as written:
        assert written.format == "PNG" and written.size == (1200, 680)
    assert "cosine similarity of hidden states 0..24" in capsys.readouterr().out
    assert [path.name for path in output.parent.iterdir()] == ["maps.png"]  # no partial file left behind
    # The library call behind the command returns what it drew: the same maps as the in-process model's.
    maps = visualize(folder, image_path, tmp_path / "again.png")
    np.testing.assert_allclose(maps.fused_map, compute_fuser_feature_maps(model, processor, picture).fused_map,
                               rtol=1e-5)


def test_bad_arguments_fail_before_loading(tmp_path, picture):
    image_path = tmp_path / "picture.png"
    picture.save(image_path)
    with pytest.raises(ValueError, match=r"\.png"):
        visualize(tmp_path / "no-model", image_path, tmp_path / "maps.jpg")
    with pytest.raises(FileNotFoundError, match="no image"):
        visualize(tmp_path / "no-model", tmp_path / "missing.png", tmp_path / "maps.png")
    assert not (tmp_path / "maps.png").exists()
