"""LLaVA-1.5's preprocessing as a stock `LlavaProcessor`: pad-to-square, the vicuna_v1 prompt, the original token ids.

No custom processor class is needed, so a Hub repo's `processor_config.json` loads with plain `AutoProcessor`.
"""

import re

from tokenizers import AddedToken, Regex, normalizers, pre_tokenizers
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


def _with_normalized(token: AddedToken, normalized: bool) -> AddedToken:
    """`token` with its `normalized` flag set; the backend replaces an added token given again with new flags."""
    return AddedToken(
        token.content, single_word=token.single_word, lstrip=token.lstrip, rstrip=token.rstrip,
        normalized=normalized, special=token.special,
    )


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> int:
    """Add `<image>` and a pad token where missing and put sentencepiece's dummy prefix "▁" where the original's
    chunked tokenization puts it; returns how many tokens were added.

    The original splits the prompt at `<image>` and tokenizes each chunk with Vicuna's slow Llama tokenizer
    (`legacy=False`): a chunk starts with "▁" unless it starts with a special token, and the text after a special token
    inside a chunk (the "</s>" closing an answer) gets none. A Metaspace pre-tokenizer cannot tell `<image>` from
    "</s>": it sees the text between added tokens, not the token before it. The normalizer can, because added tokens
    with `normalized=False` are split off before it runs and the others after it: `<image>` stays unnormalized, the
    other special tokens become normalized, and the normalizer prepends "▁" to each chunk except before a leading
    special token (which also keeps the special tokens' own normalized forms, which they are matched by, unchanged).
    Metaspace then only replaces spaces. Non-special added tokens (Vicuna has none) become unnormalized, so they are
    still matched anywhere and, as before, followed by "▁". The backend itself is changed: `portable_tokenizer` saves
    it verbatim. BOS is added, EOS is not, as in the original.
    """
    image = AddedToken(IMAGE_TOKEN, normalized=False, special=True)
    added = tokenizer.add_special_tokens({"additional_special_tokens": [image]})
    if tokenizer.pad_token is None:
        added += tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    backend = tokenizer.backend_tokenizer
    metaspace = backend.pre_tokenizer
    if isinstance(metaspace, pre_tokenizers.Metaspace) and metaspace.prepend_scheme != "never":
        others = [token for token in backend.get_added_tokens_decoder().values() if token.content != IMAGE_TOKEN]
        specials = [token for token in others if token.special]  # never empty: the pad token is one
        backend.add_special_tokens([_with_normalized(token, True) for token in specials])
        backend.add_tokens([_with_normalized(token, False) for token in others if not token.special])
        prefix = metaspace.replacement
        before_special = "|".join(re.escape(token.content) for token in specials)
        kept = [backend.normalizer] if backend.normalizer is not None else []
        backend.normalizer = normalizers.Sequence([
            *kept,
            normalizers.Prepend(prefix),
            normalizers.Replace(Regex(rf"\A{re.escape(prefix)}(?={before_special})"), ""),
        ])
        metaspace.prepend_scheme = "never"
    tokenizer.init_kwargs.update(add_bos_token=True, add_eos_token=False)
    return added


def portable_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerFast:
    """The same tokenization as a generic fast tokenizer, which saves and loads `tokenizer.json` verbatim.

    A `LlamaTokenizer` rebuilds its normalizer (none) and its Metaspace pre-tokenizer (from the `legacy` flag, which
    transformers 5.23 drops when a loaded tokenizer is saved again) when loaded: a saved one would lose what
    `prepare_tokenizer` set. The generic class keeps the normalizer, the pre-tokenizer and the added tokens'
    `normalized` flags of `tokenizer.json`, so every later save keeps the ids.
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
