"""transformers' own model tests, run against MMFuser-LLaVA under the running transformers release.

transformers' `tests/test_modeling_common.py` (`ModelTesterMixin`) and `tests/test_configuration_common.py`
(`ConfigTester`) are not in this tree: `use_transformers_tests()` puts the `tests/` folder of the running release's
source distribution, fetched at test time and checked against the sha256 recorded in tests/transformers_releases.py
(tests/transformers_sdist.py), on this package's path, after the package's own folder. So `.test_modeling_common`
is transformers' file of that release, and the files it imports from transformers' repository that its sdist lacks
resolve to this project's stand-ins here (generation/test_utils.py, exporters/test_export.py,
utils/test_configuration_utils.py), each saying what it replaces and which tests therefore do not run. What differs
between releases is in releases.py. test_modeling_mmfuser_llava.py (the MMFuser tester) and conftest.py are this
project's.
"""

from pathlib import Path


def use_transformers_tests() -> Path:
    """Fetch (or find in the cache) the running release's test files and append their folder to this package's path."""
    import transformers
    from transformers_sdist import transformers_tests

    folder = transformers_tests(transformers.__version__)
    if str(folder) not in __path__:
        __path__.append(str(folder))
    return folder
