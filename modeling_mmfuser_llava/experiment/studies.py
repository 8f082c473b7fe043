"""The toy experiment's named studies: the paper's main comparison and its three ablations (Tables VI, VII, VIII).

A study is a list of rows, each naming the run that trains it; a run is the `mmfuser-llava train` flags that set it
apart from the default MMFuser (layers 1/3/4/6 as keys/values, the penultimate as query, deformable cross- and
self-attention). Rows of different studies that train the same thing name the same run, which is trained once.

The paper's CLIP ViT-L has 24 layers, the toy tower 8: a paper layer `l` is the toy layer `round(l * 8 / 24)`, where
0 is the embeddings, as `hidden_states[0]` is in both. Tables VI's shallow and deep rows then name one toy layer
twice; the fuser takes a repeated layer as two levels with their own sampling offsets, so every row keeps four
key/value levels and the same parameters. Light like the package's `__init__` (no torch): the command line reads it.
"""

from dataclasses import dataclass

PAPER_DEPTH, TOY_DEPTH = 24, 8
# PVTv2 pools keys/values to 7x7 on CLIP-L's 24x24 grid. The toy grid is 4x4, where the proportional side, 1, would
# average a layer to one token; 2x2 is the smallest pool that keeps a layout.
TOY_SRA_POOL_SIZE = 2


def toy_layers(*paper_layers: int) -> str:
    """`--mm_vision_select_layer` for the paper's key/value layers on the toy tower, the penultimate layer as query."""
    return "list" + "/".join(str(round(layer * TOY_DEPTH / PAPER_DEPTH)) for layer in paper_layers) + "/-2"


DEFAULT_RUN = "mmfuser"
# Run -> the training flags that differ from the default MMFuser run (see `recipe.train_two_stages`).
RUNS: dict[str, dict[str, str]] = {
    "llava": {"--fuser_fusion": "none"},
    "concat": {"--fuser_fusion": "concat"},
    "average": {"--fuser_fusion": "average"},
    DEFAULT_RUN: {},
    "layers-shallow": {"--mm_vision_select_layer": toy_layers(1, 3, 5, 7)},
    "layers-intermediate": {"--mm_vision_select_layer": toy_layers(9, 11, 13, 15)},
    "layers-deep": {"--mm_vision_select_layer": toy_layers(17, 19, 21, 24)},
    "layers-non-uniform": {"--mm_vision_select_layer": toy_layers(5, 8, 11, 20)},
    "attention-global": {"--fuser_attention_type": "global"},
    "attention-linear-sra": {"--fuser_attention_type": "linear_sra", "--fuser_sra_pool_size": str(TOY_SRA_POOL_SIZE)},
    "cross-attention-only": {"--fuser_self_attention": "False"},
}


@dataclass(frozen=True)
class Row:
    label: str  # the paper's name for the row
    run: str  # a key of RUNS


@dataclass(frozen=True)
class Study:
    title: str
    rows: tuple[Row, ...]
    default_seeds: int

    def runs(self) -> list[str]:
        return [row.run for row in self.rows]


STUDIES: dict[str, Study] = {
    "main": Study("Table I: LLaVA-1.5 vs simple fusions vs MMFuser", (
        Row("LLaVA-1.5 (query layer only)", "llava"),
        Row("concat", "concat"),
        Row("average", "average"),
        Row("MMFuser", DEFAULT_RUN),
    ), default_seeds=8),
    "layers": Study("Table VI: key/value layers (paper layers -> toy layers)", (
        Row("LLaVA-1.5 (no key/value layers)", "llava"),
        Row("shallow [1,3,5,7] -> 0/1/2/2", "layers-shallow"),
        Row("intermediate [9,11,13,15] -> 3/4/4/5", "layers-intermediate"),
        Row("deep [17,19,21,24] -> 6/6/7/8", "layers-deep"),
        Row("non-uniform [5,8,11,20] -> 2/3/4/7", "layers-non-uniform"),
        Row("uniform [3,8,13,18] -> 1/3/4/6 (MMFuser)", DEFAULT_RUN),
    ), default_seeds=5),
    "attention": Study("Table VII: attention inside the block", (
        Row("global attention (quadratic)", "attention-global"),
        Row(f"linear SRA ({TOY_SRA_POOL_SIZE}x{TOY_SRA_POOL_SIZE} pool)", "attention-linear-sra"),
        Row("deformable attention (MMFuser)", DEFAULT_RUN),
    ), default_seeds=5),
    "modules": Study("Table VIII: the block's modules", (
        Row("LLaVA-1.5", "llava"),
        Row("+ cross-attention", "cross-attention-only"),
        Row("+ self-attention (MMFuser)", DEFAULT_RUN),
    ), default_seeds=5),
}

__all__ = ["DEFAULT_RUN", "RUNS", "STUDIES", "Row", "Study", "toy_layers"]
