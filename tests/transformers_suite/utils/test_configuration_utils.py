"""Stand-in for transformers' tests/utils/test_configuration_utils.py, which its source distribution does not include.

`ConfigTester` reads `config_common_kwargs` only for configs without sub-configs; MMFuserLlavaConfig has two
(vision and text), so the check that uses it returns before reading it.
"""

config_common_kwargs: dict = {}
