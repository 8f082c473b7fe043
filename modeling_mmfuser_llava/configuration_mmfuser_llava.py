"""MMFuser-LLaVA configuration: a `LlavaConfig` plus the settings of the multi-layer fuser.

Hub-facing: imports only transformers, so a Hub repo can carry this file alone.
"""

import re
import warnings
from typing import Any

import transformers
from transformers import LlavaConfig
from transformers.configuration_utils import strict  # huggingface_hub's, re-exported: Hub files import transformers only

# The transformers releases these files are proven on (tests/test_integration_transformers_versions.py): the lowest
# supported release and the first one not yet proven. Older releases are refused when loading; newer ones get a
# warning, since the fuser checks at run time that it reads the layers the config names (an error, never a misread).
LOWEST_SUPPORTED_TRANSFORMERS = (5, 16, 1)
FIRST_UNSUPPORTED_TRANSFORMERS = (5, 25, 0)
SUPPORTED_TRANSFORMERS_RANGE = (
    f">={'.'.join(map(str, LOWEST_SUPPORTED_TRANSFORMERS))},<{'.'.join(map(str, FIRST_UNSUPPORTED_TRANSFORMERS[:2]))}"
)


def transformers_release(version: str = transformers.__version__) -> tuple[int, int, int]:
    """(major, minor, patch) of a transformers version string such as "5.23.0" or "5.25.0.dev0"."""
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    if match is None:
        raise ValueError(f"cannot read the transformers version {version!r}")
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def check_transformers_release(version: str = transformers.__version__) -> None:
    """Refuse a transformers release older than the proven range (hidden-state capture and config loading differ
    there, and change the model's outputs without an error); warn about a newer, not yet proven one, so that a Hub
    repo keeps loading when transformers moves on."""
    release = transformers_release(version)
    if release < LOWEST_SUPPORTED_TRANSFORMERS:
        raise ImportError(
            f"MMFuser-LLaVA's model files support transformers{SUPPORTED_TRANSFORMERS_RANGE}, but transformers "
            f"{version} is installed: pip install 'transformers{SUPPORTED_TRANSFORMERS_RANGE}'"
        )
    if release >= FIRST_UNSUPPORTED_TRANSFORMERS:
        warnings.warn(
            f"MMFuser-LLaVA's model files are proven on transformers{SUPPORTED_TRANSFORMERS_RANGE}; transformers "
            f"{version} is newer and not yet proven (pip install 'transformers{SUPPORTED_TRANSFORMERS_RANGE}' for a "
            "proven release)",
            stacklevel=2,
        )


check_transformers_release()

# The paper's fusion methods: its MMFuser block (default), Table I's simple fusions, and the single-layer baseline.
FUSER_FUSIONS = ("mmfuser", "concat", "average", "weighted_average", "none")
# Attention inside the MMFuser block: the default, and Table VII's global attention and linear SRA.
FUSER_ATTENTION_TYPES = ("deformable", "global", "linear_sra")

# Written into every saved config so that a Hub folder loads through all three Auto classes with trust_remote_code.
DEFAULT_AUTO_MAP = {
    "AutoConfig": "configuration_mmfuser_llava.MMFuserLlavaConfig",
    "AutoModel": "modeling_mmfuser_llava.MMFuserLlavaModel",
    "AutoModelForImageTextToText": "modeling_mmfuser_llava.MMFuserLlavaForConditionalGeneration",
}


def _field_errors_as_value_errors(cls: type) -> type:
    """Make `@strict`'s per-field checks (type, Literal choices) raise a ValueError, as `check_fuser_settings` does.

    `@strict` raises huggingface_hub's StrictDataclassFieldValidationError, which is no ValueError, so callers that
    catch ValueError for a bad setting (the converter, users) would miss a wrong type. The message names the field and
    what it allows. The error is recognised by the validator's TypeError/ValueError it wraps, because its class cannot
    be imported here (Hub files import transformers only).
    """
    strict_setattr = cls.__setattr__

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            strict_setattr(self, name, value)
        except Exception as error:
            if isinstance(error, ValueError) or not isinstance(error.__cause__, (TypeError, ValueError)):
                raise
            raise ValueError(f"invalid {name}: {error.__cause__}") from error

    cls.__setattr__ = __setattr__
    return cls


@_field_errors_as_value_errors
@strict
class MMFuserLlavaConfig(LlavaConfig):
    r"""
    Configuration of [`MMFuserLlavaForConditionalGeneration`]: LLaVA-1.5 whose projector is fed a fusion of several
    vision-tower layers (MMFuser, arXiv:2410.11829) instead of the penultimate layer alone.

    All [`LlavaConfig`] fields keep their meaning; `vision_feature_layer` is the fuser's *query* layer.

    Args:
        fuser_key_value_layers (`tuple[int, ...]`, defaults to `(-22, -17, -12, -7)`):
            Indices into the vision tower's `hidden_states` (embeddings first, then one entry per layer) of the maps the
            query attends to, in level order. The default picks CLIP ViT-L layers 3, 8, 13 and 18. A layer may appear
            more than once (also as the query), since the original's `mm_vision_select_layer` list may repeat one.
        fuser_num_heads (`int`, defaults to 16):
            Attention heads of both deformable attentions; must divide the vision hidden size.
        fuser_num_points (`int`, defaults to 4):
            Sampling points per head and level.
        fuser_layer_norm_eps (`float`, defaults to 1e-6):
            Epsilon of the fuser's three LayerNorms.
        fuser_attention_type (`str`, defaults to `"deformable"`):
            Attention of both the cross- and the self-attention of the MMFuser block (paper, Table VII). Allowed:
            `"deformable"` (the paper's choice, linear in the number of tokens), `"global"` (multi-head attention of
            every query over every key/value token, quadratic) or `"linear_sra"` (PVTv2's linear spatial-reduction
            attention: keys/values average-pooled to `fuser_sra_pool_size`**2 tokens per layer first). The block's
            structure, zero gates and parameter names stay the same; only `fuser_fusion="mmfuser"` uses attention.
        fuser_sra_pool_size (`int`, defaults to 7):
            Side of the pooled key/value map of `"linear_sra"` (PVTv2 pools to 7x7); at most the patch grid's side.
        fuser_self_attention (`bool`, defaults to `True`):
            Whether the MMFuser block refines its cross-attention's output with deformable self-attention (the
            paper's design). `False` keeps the cross-attention alone, Table VIII's middle row; its checkpoints hold no
            `self_attn`, `norm1` or `gamma2`. Only `fuser_fusion="mmfuser"` has the block.
        fuser_fusion (`str`, defaults to `"mmfuser"`):
            How the selected layers are combined (paper, Table I), always over `fuser_key_value_layers` followed by
            the query layer `vision_feature_layer`:
            - `"mmfuser"`: the MMFuser block; zero gates make it return the query layer at initialisation.
            - `"concat"`: channel concatenation, so the projector takes `vision hidden size * (key/value layers + 1)`
              inputs. Its output is wider than the query layer, but started from a Llava checkpoint's projector (by
              `mmfuser-llava train`), the projector reads only the query layer's columns (the others start at zero),
              so the model starts as that Llava; from a base LLM the projector is random, as every new one is.
            - `"average"`: the element-wise mean of the layers; no parameters, so it cannot start as the query layer.
            - `"weighted_average"`: `sum_i w_i * layer_i` with one learnable scalar per layer, initialised to 1 for the
              query layer and 0 elsewhere, so training starts from the query layer exactly.
            - `"none"`: the query layer alone, i.e. LLaVA-1.5 (the baseline of the paper's comparisons).
    """

    model_type = "mmfuser_llava"

    vision_feature_layer: int | list[int] = -2
    fuser_key_value_layers: list[int] | tuple[int, ...] = (-22, -17, -12, -7)
    fuser_num_heads: int = 16
    fuser_num_points: int = 4
    fuser_layer_norm_eps: float = 1e-6
    # Plain `str` (not Literal), so that a wrong value raises the ValueError of `check_fuser_settings`.
    fuser_attention_type: str = "deformable"
    fuser_sra_pool_size: int = 7
    fuser_self_attention: bool = True
    fuser_fusion: str = "mmfuser"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        # JSON gives lists back; keep one type so that configs compare and serialise alike.
        self.fuser_key_value_layers = tuple(self.fuser_key_value_layers)
        if getattr(self, "auto_map", None) is None:
            self.auto_map = dict(DEFAULT_AUTO_MAP)
        self.check_fuser_settings()

    @property
    def fuser_hidden_state_indices(self) -> list[int]:
        """The `hidden_states` entries the vision pass must keep: keys/values in level order, then the query."""
        return [*self.fuser_key_value_layers, self.vision_feature_layer]

    @property
    def fuser_output_size(self) -> int:
        """Width of the fuser's output, the projector's input: one vision hidden size, or one per layer for concat."""
        layers = len(self.fuser_hidden_state_indices) if self.fuser_fusion == "concat" else 1
        return self.vision_config.hidden_size * layers

    @property
    def vision_grid_size(self) -> int:
        """Side of the square patch grid the vision tower produces (24 for CLIP ViT-L/14 at 336 px)."""
        return self.vision_config.image_size // self.vision_config.patch_size

    def check_fuser_settings(self) -> None:
        """Raise a ValueError naming the field for any setting the fuser or the vision tower cannot honour.

        Run when the config is made and again when a model is built from it, since fields may be assigned in between.
        """
        vision = self.vision_config
        num_hidden_states = vision.num_hidden_layers + 1
        if isinstance(self.vision_feature_layer, bool) or not isinstance(self.vision_feature_layer, int):
            raise ValueError(
                f"vision_feature_layer must be a single int (the fuser's query layer), got {self.vision_feature_layer!r}"
            )
        if not self.fuser_key_value_layers:
            raise ValueError("fuser_key_value_layers must name at least one vision layer, got an empty list")
        for field, index in [("vision_feature_layer", self.vision_feature_layer)] + [
            ("fuser_key_value_layers", index) for index in self.fuser_key_value_layers
        ]:
            if isinstance(index, bool) or not isinstance(index, int):
                raise ValueError(f"{field} must hold ints, got {index!r}")
            if not -num_hidden_states <= index < num_hidden_states:
                raise ValueError(
                    f"{field} holds {index}, outside the vision tower's hidden states: a "
                    f"{vision.num_hidden_layers}-layer tower allows indices from {-num_hidden_states} to "
                    f"{num_hidden_states - 1}"
                )
        if self.fuser_fusion not in FUSER_FUSIONS:
            raise ValueError(f"fuser_fusion must be one of {FUSER_FUSIONS}, got {self.fuser_fusion!r}")
        if self.fuser_attention_type not in FUSER_ATTENTION_TYPES:
            raise ValueError(
                f"fuser_attention_type must be one of {FUSER_ATTENTION_TYPES}, got {self.fuser_attention_type!r}"
            )
        if self.fuser_fusion != "mmfuser" and self.fuser_attention_type != "deformable":
            raise ValueError(
                f"fuser_attention_type={self.fuser_attention_type!r} applies to fuser_fusion='mmfuser' only; "
                f"fuser_fusion={self.fuser_fusion!r} has no attention: leave fuser_attention_type at 'deformable'"
            )
        if self.fuser_fusion != "mmfuser" and not self.fuser_self_attention:
            raise ValueError(
                f"fuser_self_attention=False applies to fuser_fusion='mmfuser' only; fuser_fusion="
                f"{self.fuser_fusion!r} has no attention: leave fuser_self_attention at True"
            )
        if self.fuser_num_heads < 1 or vision.hidden_size % self.fuser_num_heads:
            raise ValueError(
                f"fuser_num_heads must be a positive divisor of the vision hidden size {vision.hidden_size}, "
                f"got {self.fuser_num_heads}"
            )
        if self.fuser_num_points < 1:
            raise ValueError(f"fuser_num_points must be at least 1, got {self.fuser_num_points}")
        if not self.fuser_layer_norm_eps > 0:
            raise ValueError(f"fuser_layer_norm_eps must be positive, got {self.fuser_layer_norm_eps}")
        if vision.image_size % vision.patch_size:
            raise ValueError(
                f"vision_config.image_size ({vision.image_size}) must be a multiple of vision_config.patch_size "
                f"({vision.patch_size}): the fuser works on a square grid of patches"
            )
        if self.fuser_attention_type == "linear_sra" and not 1 <= self.fuser_sra_pool_size <= self.vision_grid_size:
            raise ValueError(
                f"fuser_sra_pool_size must be between 1 and the patch grid's side {self.vision_grid_size}, "
                f"got {self.fuser_sra_pool_size}"
            )
        if self.image_seq_length != self.vision_grid_size**2:
            raise ValueError(
                f"image_seq_length must be the number of patches, {self.vision_grid_size}**2 = "
                f"{self.vision_grid_size**2} for image_size {vision.image_size} and patch_size {vision.patch_size}, "
                f"got {self.image_seq_length}"
            )


__all__ = ["MMFuserLlavaConfig"]
