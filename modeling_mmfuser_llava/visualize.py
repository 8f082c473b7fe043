"""What the fuser sees: the paper's Figure 5 (input, key/value layers, query layer, fuser output as maps on the patch
grid) and Figure 1(a) (each vision layer's cosine similarity to the final layer), from one vision pass of a model.

Every array drawn comes from the model's own tensors: the vision tower's `hidden_states` and the model's fuser applied
to them, each token's features reduced to one number (channel norm, or the first principal component of the map).
"""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REDUCTIONS = ("norm", "pca")


@dataclass
class FuserFeatureMaps:
    """The data of the figure: `(grid, grid)` maps, the picture the tower saw and the per-layer similarities."""

    image: np.ndarray  # (height, width, 3) in [0, 1]: the preprocessed pixels (padded to a square, resized)
    key_value_map: np.ndarray  # the mean of the key/value layers' features, reduced per token
    query_map: np.ndarray
    fused_map: np.ndarray
    layer_similarity: np.ndarray  # (hidden states,): mean cosine similarity of each layer's tokens to the final layer's
    key_value_layers: list[int]  # hidden-state indices (0 = embeddings, i = after block i)
    query_layer: int
    fusion: str
    reduction: str


def reduce_tokens(features: torch.Tensor, grid_size: int, reduction: str = "norm") -> np.ndarray:
    """(tokens, channels) -> (grid, grid) float32: each token's channel L2 norm, or its coordinate on the map's first
    principal component (signed so that it grows with the token norm)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    features = features.float()
    norms = features.norm(dim=-1)
    if reduction == "norm":
        values = norms
    else:
        centred = features - features.mean(0)
        first_component = torch.linalg.svd(centred, full_matrices=False).Vh[0]
        values = centred @ first_component
        if torch.dot(values, norms - norms.mean()) < 0:
            values = -values
    return values.reshape(grid_size, grid_size).cpu().numpy()


def layer_similarity_to_final(hidden_states: tuple[torch.Tensor, ...], num_tokens: int) -> np.ndarray:
    """Mean over the last `num_tokens` tokens (the patches) of each hidden state's cosine similarity to the last one."""
    final = hidden_states[-1][:, -num_tokens:].float()
    return np.array(
        [
            torch.nn.functional.cosine_similarity(layer[:, -num_tokens:].float(), final, dim=-1).mean().item()
            for layer in hidden_states
        ]
    )


@torch.no_grad()
def compute_fuser_feature_maps(model, processor, image: Image.Image, reduction: str = "norm") -> FuserFeatureMaps:
    """One vision pass with every hidden state, then the model's own fuser on the layers its config selects.

    `model` is an MMFuser-LLaVA `...ForConditionalGeneration` (loaded natively or through trust_remote_code).
    """
    config = model.config
    grid_size = config.vision_config.image_size // config.vision_config.patch_size
    num_patches = grid_size**2
    base = model.model
    pixel_values = processor.image_processor(image.convert("RGB"), return_tensors="pt")["pixel_values"]
    pixel_values = pixel_values.to(base.vision_tower.device, model.dtype)
    hidden_states = base.vision_tower(pixel_values, output_hidden_states=True).hidden_states
    # The fuser's inputs exactly as get_image_features gives them ("default" drops the CLS token).
    first_token = 1 if config.vision_feature_select_strategy == "default" else 0
    key_values = [hidden_states[index][:, first_token:] for index in config.fuser_key_value_layers]
    query = hidden_states[config.vision_feature_layer][:, first_token:]
    fused = base.fuser(query, key_values)

    def patch_map(features: torch.Tensor) -> np.ndarray:
        return reduce_tokens(features[0, -num_patches:], grid_size, reduction)

    mean = torch.tensor(processor.image_processor.image_mean).view(3, 1, 1)
    std = torch.tensor(processor.image_processor.image_std).view(3, 1, 1)
    pixels = (pixel_values[0].float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    num_hidden_states = len(hidden_states)
    return FuserFeatureMaps(
        image=pixels,
        key_value_map=patch_map(torch.stack(key_values).mean(0)),
        query_map=patch_map(query),
        fused_map=patch_map(fused),
        layer_similarity=layer_similarity_to_final(hidden_states, num_patches),
        key_value_layers=[index % num_hidden_states for index in config.fuser_key_value_layers],
        query_layer=config.vision_feature_layer % num_hidden_states,
        fusion=config.fuser_fusion if config.fuser_fusion != "mmfuser" else f"MMFuser, {config.fuser_attention_type}",
        reduction=reduction,
    )


def plot_fuser_feature_maps(maps: FuserFeatureMaps):
    """A matplotlib Figure (Agg canvas, no pyplot state): the four panels of Figure 5 above Figure 1(a)'s chart."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 6.8), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(2, 4, height_ratios=(1, 0.8))
    reduced = "channel norm" if maps.reduction == "norm" else "1st principal component"
    key_value_names = ", ".join(str(layer) for layer in maps.key_value_layers)
    panels = [
        ("Input image", maps.image),
        (f"Key/Value: mean of layers {key_value_names}", maps.key_value_map),
        (f"Query: layer {maps.query_layer}", maps.query_map),
        (f"Fuser output ({maps.fusion})", maps.fused_map),
    ]
    for column, (title, data) in enumerate(panels):
        axes = figure.add_subplot(grid[0, column])
        axes.imshow(data, cmap=None if data.ndim == 3 else "viridis", interpolation="nearest")
        axes.set_title(title, fontsize=10)
        axes.set_axis_off()
    figure.suptitle(f"What the fuser sees (per-token {reduced} on the patch grid)")

    chart = figure.add_subplot(grid[1, :])
    layers = np.arange(len(maps.layer_similarity))
    chart.plot(layers, maps.layer_similarity, marker="o", color="tab:gray", label="vision layer")
    chart.scatter(maps.key_value_layers, maps.layer_similarity[maps.key_value_layers], s=90, color="tab:blue",
                  zorder=3, label="key/value layers")
    chart.scatter([maps.query_layer], maps.layer_similarity[[maps.query_layer]], s=90, color="tab:red", zorder=3,
                  label="query layer")
    chart.set_xlabel("hidden state (0 = embeddings, i = after block i)")
    chart.set_ylabel(f"cosine similarity to layer {layers[-1]}")
    chart.set_title("Similarity of each vision layer's patch features to the final layer's (mean over patches)",
                    fontsize=10)
    chart.set_xticks(layers)
    chart.grid(alpha=0.3)
    chart.legend(loc="lower right")
    return figure


def png_path(output_path: str | Path) -> Path:
    """`output_path` as a Path, refused unless it names a .png file."""
    output_path = Path(output_path)
    if output_path.suffix.lower() != ".png":
        raise ValueError(f"the output must be a .png file, got {output_path}")
    return output_path


def save_figure(figure, output_path: str | Path) -> Path:
    """Write `figure` as PNG, all or nothing: to a temporary file beside `output_path`, then moved into place."""
    output_path = png_path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    partial = output_path.with_name(f".{output_path.name}.partial")
    try:
        figure.savefig(partial, format="png", dpi=100)
        os.replace(partial, output_path)
    finally:
        partial.unlink(missing_ok=True)
    return output_path


def visualize(
    model_name_or_path: str | Path,
    image_path: str | Path,
    output_path: str | Path,
    reduction: str = "norm",
    device: str = "cpu",
) -> FuserFeatureMaps:
    """Load a model (Hub id or folder, trust_remote_code), draw its feature maps for one image into a PNG."""
    from .demo import load_for_inference

    png_path(output_path)
    image_path = Path(image_path)
    if not image_path.is_file():
        raise FileNotFoundError(f"no image at {image_path}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    model, processor = load_for_inference(model_name_or_path, device=device)
    with Image.open(image_path) as opened:
        maps = compute_fuser_feature_maps(model, processor, opened, reduction)
    save_figure(plot_fuser_feature_maps(maps), output_path)
    return maps


__all__ = [
    "FuserFeatureMaps",
    "compute_fuser_feature_maps",
    "layer_similarity_to_final",
    "plot_fuser_feature_maps",
    "png_path",
    "reduce_tokens",
    "save_figure",
    "visualize",
]
