"""LLaVA-1.5's preprocessing as a stock `LlavaProcessor`: pad-to-square, the vicuna_v1 prompt, the original token ids.

No custom processor class is needed, so a Hub repo's `processor_config.json` loads with plain `AutoProcessor`.
"""

from tokenizers import pre_tokenizers
from transformers import LlavaImageProcessorPil, LlavaProcessor, PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"

VICUNA_V1_SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

# The original `conv_vicuna_v1` (sep_style TWO): "{system} USER: {msg} ASSISTANT: {answer}</s>USER: ...", images first
# in a turn as "<image>\n". No BOS here: the processor's tokenizer adds it, as the original did.
VICUNA_V1_CHAT_TEMPLATE = (
    "{%- set system = namespace(text='" + VICUNA_V1_SYSTEM_PROMPT.replace("'", "\\'") + "') -%}"
    "{%- for message in messages if message['role'] == 'system' -%}"
    "{%- if message['content'] is string -%}{%- set system.text = message['content'] -%}"
    "{%- else -%}{%- set system.text = message['content'] | selectattr('type', 'equalto', 'text')"
    " | map(attribute='text') | join('') -%}{%- endif -%}"
    "{%- endfor -%}"
    "{{- system.text + ' ' -}}"
    "{%- for message in messages if message['role'] != 'system' -%}"
    "{%- if message['role'] == 'user' -%}{{- 'USER: ' -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- 'ASSISTANT: ' -}}"
    "{%- else -%}{{- raise_exception('vicuna_v1 knows the roles system, user and assistant, got ' + message['role']) -}}"
    "{%- endif -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for item in message['content'] if item['type'] == 'image' -%}{{- '<image>\n' -}}{%- endfor -%}"
    "{%- for item in message['content'] if item['type'] == 'text' -%}{{- item['text'] -}}{%- endfor -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}{{- ' ' -}}{%- else -%}{{- '</s>' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> int:
    """Add `<image>` and a pad token where missing and make the text after a special token start with "▁", as the
    original's chunked tokenization does; returns how many tokens were added.

    The original tokenizes the text on each side of `<image>` separately, so the text after it starts with
    sentencepiece's dummy prefix "▁". A Llama tokenizer's Metaspace pre-tokenizer does the same after every special
    token only with `prepend_scheme="always"` (transformers calls it `legacy=True`); transformers 5 defaults to
    "first". The scheme is set on the backend itself, not only as a flag, because a flag does not survive a reload
    and re-save (see `build_processor`). BOS is added, EOS is not, as in the original.
    """
    added = tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tokenizer.pad_token is None:
        added += tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    backend = tokenizer.backend_tokenizer
    if isinstance(backend.pre_tokenizer, pre_tokenizers.Metaspace):
        backend.pre_tokenizer.prepend_scheme = "always"
    tokenizer.init_kwargs.update(legacy=True, add_bos_token=True, add_eos_token=False)
    return added


def portable_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerFast:
    """The same tokenization as a generic fast tokenizer, which saves and loads `tokenizer.json` verbatim.

    A `LlamaTokenizer` rebuilds its pre-tokenizer from the `legacy` flag when loaded, and transformers 5.23 drops that
    flag when a loaded tokenizer is saved again: the second save of a Hub folder would lose the "▁" after `<image>`.
    The generic class has no such flag, so every later save keeps the ids.
    """
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.backend_tokenizer,
        bos_token=tokenizer.bos_token,
        eos_token=tokenizer.eos_token,
        unk_token=tokenizer.unk_token,
        pad_token=tokenizer.pad_token,
        padding_side=tokenizer.padding_side,
        model_max_length=tokenizer.model_max_length,
        clean_up_tokenization_spaces=False,
    )


def build_image_processor(image_size: int) -> LlavaImageProcessorPil:
    """CLIP preprocessing after padding to a square in the CLIP mean colour (LLaVA-1.5's `image_aspect_ratio='pad'`)."""
    return LlavaImageProcessorPil(
        do_pad=True,
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        resample=PILImageResampling.BICUBIC,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
    )


def build_processor(
    tokenizer: PreTrainedTokenizerBase,
    image_size: int,
    patch_size: int,
    vision_feature_select_strategy: str = "default",
) -> LlavaProcessor:
    """The processor of an MMFuser-LLaVA model; `tokenizer` must have been through `prepare_tokenizer`."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        raise ValueError(f"the tokenizer has no {IMAGE_TOKEN} token: pass it through prepare_tokenizer first")
    return LlavaProcessor(
        image_processor=build_image_processor(image_size),
        tokenizer=portable_tokenizer(tokenizer),
        patch_size=patch_size,
        vision_feature_select_strategy=vision_feature_select_strategy,
        chat_template=VICUNA_V1_CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
        # "default" drops the CLS token, which LlavaProcessor counts as one extra token to subtract.
        num_additional_image_tokens=1 if vision_feature_select_strategy == "default" else 0,
    )


__all__ = [
    "IMAGE_TOKEN",
    "VICUNA_V1_CHAT_TEMPLATE",
    "VICUNA_V1_SYSTEM_PROMPT",
    "build_image_processor",
    "build_processor",
    "prepare_tokenizer",
]
