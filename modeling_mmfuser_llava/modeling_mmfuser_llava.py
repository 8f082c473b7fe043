"""MMFuser-LLaVA: LLaVA-1.5 whose projector sees the penultimate CLIP layer enriched with shallower layers.

Only `get_image_features` differs from Llava: it takes the fuser's layers from ONE vision pass, fuses them, then
projects. Everything else is Llava's.

Hub-facing: imports only torch, transformers and the project's other Hub files.
"""

import torch
import transformers
from torch import nn
from transformers import (
    AutoModel,
    BitsAndBytesConfig,
    GenerationMixin,
    LlavaForConditionalGeneration,
    LlavaModel,
    LlavaPreTrainedModel,
)
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults

from .configuration_mmfuser_llava import SUPPORTED_TRANSFORMERS_RANGE, MMFuserLlavaConfig, transformers_release
from .deformable_attention import MMFuserDeformableAttention, sampling_offset_bias
from .fuser import MMFuserBlock
from .fusion_variants import build_fuser, build_projector, init_fusion_variant_weights

# What `output_hidden_states=[indices]` means depends on the release: from 5.23 on, the tuple keeps its full length
# (embeddings first, then one entry per layer) with `None` for the entries not listed, so only those are kept; 5.16
# keeps every entry; 5.17-5.22 drop the embeddings entry, so that index i holds hidden state i + 1. Before 5.23 the
# fuser therefore asks for `output_hidden_states=True`, whose meaning never changed (all entries kept).
SELECTS_HIDDEN_STATES_BY_INDEX = transformers_release() >= (5, 23, 0)


def _selected_indices(output_hidden_states) -> list[int] | None:
    """The indices a caller's `output_hidden_states` selects (an index or a list of them); None for True/False/None."""
    if output_hidden_states is None or isinstance(output_hidden_states, bool):
        return None
    if isinstance(output_hidden_states, int):
        return [output_hidden_states]
    return list(output_hidden_states)


class MMFuserLlavaPreTrainedModel(LlavaPreTrainedModel):
    config: MMFuserLlavaConfig
    _no_split_modules = ["MMFuserBlock", "MMFuserAttentionVariantBlock"]
    # Module paths (anchored at the model's root, as bitsandbytes matches them) kept out of bitsandbytes quantization
    # when the user's BitsAndBytesConfig names no llm_int8_skip_modules: only the language model is quantized.
    _modules_kept_unquantized: tuple[str, ...] = ()

    @classmethod
    def from_pretrained(cls, *args, quantization_config=None, **kwargs):
        """`from_pretrained`, with the vision tower, fuser, projector (and lm_head) unquantized under bitsandbytes.

        transformers would quantize every Linear but lm_head; `_keep_in_fp32_modules`, the hook its quantizers read,
        would also upcast those modules to float32 in a float16 load (breaking lm_head) and override an explicit skip
        list. So the default list is filled in here, only when the user gave none: an explicit list is used as is.
        A dict with bitsandbytes settings (which transformers accepts, e.g. `{"load_in_4bit": True}`) is read as the
        `BitsAndBytesConfig` transformers would make of it, so it gets the same default.
        """
        if isinstance(quantization_config, dict) and (
            quantization_config.get("load_in_4bit") or quantization_config.get("load_in_8bit")
        ):
            quantization_config = BitsAndBytesConfig.from_dict(quantization_config)
        if isinstance(quantization_config, BitsAndBytesConfig) and quantization_config.llm_int8_skip_modules is None:
            quantization_config = BitsAndBytesConfig.from_dict(
                {**quantization_config.to_dict(), "llm_int8_skip_modules": list(cls._modules_kept_unquantized)}
            )
        return super().from_pretrained(*args, quantization_config=quantization_config, **kwargs)

    def _init_weights(self, module: nn.Module) -> None:
        """The original initialisation; here, not in `__init__`, so that `from_pretrained` keeps it for missing weights.

        The attentions are initialised from their block: for remote code, transformers skips `_init_weights` on modules
        without parameters of their own (the attentions hold only Linears), while the block owns the gates.
        """
        super()._init_weights(module)
        if isinstance(module, MMFuserBlock):
            init.zeros_(module.gamma1)
            if module.use_self_attention:
                init.zeros_(module.gamma2)
            for name in module.attention_names():
                attention = getattr(module, name)
                if isinstance(attention, MMFuserDeformableAttention):
                    self._init_deformable_attention(attention)
        init_fusion_variant_weights(module)

    @staticmethod
    def _init_deformable_attention(attention: MMFuserDeformableAttention) -> None:
        init.zeros_(attention.sampling_offsets.weight)
        init.copy_(
            attention.sampling_offsets.bias,
            sampling_offset_bias(attention.num_heads, attention.num_levels, attention.num_points),
        )
        init.zeros_(attention.attention_weights.weight)
        init.zeros_(attention.attention_weights.bias)
        init.xavier_uniform_(attention.value_proj.weight)
        init.zeros_(attention.value_proj.bias)
        init.xavier_uniform_(attention.output_proj.weight)
        init.zeros_(attention.output_proj.bias)


class MMFuserLlavaModel(MMFuserLlavaPreTrainedModel, LlavaModel):
    config: MMFuserLlavaConfig
    _modules_kept_unquantized = ("vision_tower", "fuser", "multi_modal_projector")

    def __init__(self, config: MMFuserLlavaConfig):
        config.check_fuser_settings()  # e.g. a list assigned to vision_feature_layer after the config was made
        # LlavaModel.__init__ would run post_init before the fuser exists: build the same parts plus the fuser here.
        LlavaPreTrainedModel.__init__(self, config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.fuser = build_fuser(config)
        self.multi_modal_projector = build_projector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    @merge_with_config_defaults
    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        vision_feature_layer: int | None = None,
        vision_feature_select_strategy: str | None = None,
        image_sizes: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple | BaseModelOutputWithPooling:
        """Fuse the query layer (`vision_feature_layer`) with the key/value layers, then project.

        Returns the vision tower's output with `pooler_output` set to one (image_seq_length, text hidden) tensor per image.
        """
        if image_sizes is not None:
            raise ValueError("MMFuser-LLaVA takes square images of one size and does not accept image_sizes")
        expected_size = self.config.vision_config.image_size
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[-2:]) != (expected_size, expected_size):
            raise ValueError(
                f"pixel_values must have shape (images, channels, {expected_size}, {expected_size}) for this vision "
                f"tower, got {tuple(pixel_values.shape)}: preprocess images with the model's processor"
            )
        layers = [*self.config.fuser_key_value_layers, vision_feature_layer]
        requested = kwargs.get("output_hidden_states")
        selected = _selected_indices(requested)
        if requested is not True:
            # Keep only these layers' outputs in the one vision pass, where the release allows it. A caller's own
            # selection is widened to them, since the fuser needs them whatever the caller keeps: transformers 5.24's
            # Llava forward passes the `output_hidden_states=[...]` given to `forward` (meant for the language model's
            # hidden states) down to here, and its own Llava fails there when the list misses `vision_feature_layer`.
            widened = layers if selected is None else sorted({*selected, *layers})
            kwargs["output_hidden_states"] = widened if SELECTS_HIDDEN_STATES_BY_INDEX else True
        image_outputs = self.vision_tower(pixel_values, return_dict=True, **kwargs)
        maps = self._fuser_input_maps(image_outputs.hidden_states, layers)
        if selected is not None and SELECTS_HIDDEN_STATES_BY_INDEX:  # the caller gets the entries it selected only
            count = len(image_outputs.hidden_states)
            kept = {index % count for index in selected if -count <= index < count}
            image_outputs.hidden_states = tuple(
                state if index in kept else None for index, state in enumerate(image_outputs.hidden_states)
            )
        if vision_feature_select_strategy == "default":
            maps = [feature_map[:, 1:] for feature_map in maps]
        image_features = self.multi_modal_projector(self.fuser(maps[-1], maps[:-1]))
        image_outputs.pooler_output = list(image_features)
        return image_outputs

    def _fuser_input_maps(self, hidden_states: tuple | None, layers: list[int]) -> list[torch.Tensor]:
        """The entries `layers` of the vision tower's hidden states, after checking that the tuple is the full one
        (embeddings, then one entry per layer): a shorter or shifted tuple would feed the fuser the wrong layers."""
        expected = self.config.vision_config.num_hidden_layers + 1
        if hidden_states is None or len(hidden_states) != expected or any(hidden_states[i] is None for i in layers):
            got = "none" if hidden_states is None else f"{len(hidden_states)}"
            raise RuntimeError(
                f"the vision tower returned {got} hidden states where the fuser needs all {expected} (embeddings, then "
                f"one per layer) with layers {layers} present; transformers {transformers.__version__} is installed, "
                f"MMFuser-LLaVA supports transformers{SUPPORTED_TRANSFORMERS_RANGE}"
            )
        return [hidden_states[index] for index in layers]


# GenerationMixin a direct base, as transformers requires of every generation class (it is Llava's too).
class MMFuserLlavaForConditionalGeneration(MMFuserLlavaPreTrainedModel, LlavaForConditionalGeneration, GenerationMixin):
    config: MMFuserLlavaConfig
    _modules_kept_unquantized = (*(f"model.{name}" for name in MMFuserLlavaModel._modules_kept_unquantized), "lm_head")

    def __init__(self, config: MMFuserLlavaConfig):
        LlavaPreTrainedModel.__init__(self, config)
        self.model = MMFuserLlavaModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()


__all__ = ["MMFuserLlavaForConditionalGeneration", "MMFuserLlavaModel", "MMFuserLlavaPreTrainedModel"]
