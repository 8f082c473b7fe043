"""Stand-in for transformers' tests/generation/test_utils.py, which is in transformers' git repository only, not in the
PyPI source distribution the rest of this suite is vendored from.

`test_modeling_common.py` imports `GenerationTesterMixin` only to check that a generating model's tester inherits it,
so the mixin here is empty and transformers' own generation tests do not run in this suite. MMFuser's generation is
tested instead by tests/test_generation_against_llava.py, written by this project: its `generate` against transformers'
`LlavaForConditionalGeneration` holding the same weights (greedy, seeded sampling, beam search and beam sampling,
prompt-lookup and assistant-model decoding, static and no cache, scores/logits/hidden states/attentions, batched left
padding, continuing from the returned cache, eos and `min_new_tokens`).
"""


class GenerationTesterMixin:
    """Empty: marks a tester of a model that generates."""
