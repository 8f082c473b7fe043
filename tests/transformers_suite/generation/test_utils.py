"""Stand-in for transformers' tests/generation/test_utils.py, which its source distribution does not include.

`test_modeling_common.py` imports `GenerationTesterMixin` only to check that a generating model's tester inherits it.
The generation tests themselves (transformers' GenerationTesterMixin) are therefore not run by this suite; generation
is tested by tests/test_model.py (greedy, sampling, cache, batched left padding against one by one).
"""


class GenerationTesterMixin:
    """Empty: marks a tester of a model that generates."""
