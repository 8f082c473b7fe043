"""transformers' own model tests, run against MMFuser-LLaVA.

Vendored verbatim from the transformers 5.23.0 source distribution on PyPI
(`pip download --no-binary :all: --no-deps transformers==5.23.0`), Apache License 2.0 (LICENSE beside this file),
copyright The HuggingFace Team / HuggingFace Inc.:

| here | in transformers-5.23.0.tar.gz |
|---|---|
| test_modeling_common.py | tests/test_modeling_common.py |
| test_configuration_common.py | tests/test_configuration_common.py |

The files they import from transformers' repository but that are not in the source distribution are stand-ins
written here (generation/test_utils.py, exporters/test_export.py, utils/test_configuration_utils.py), each saying
what it replaces and which tests therefore do not run. test_modeling_mmfuser_llava.py and conftest.py (registers
transformers' pytest marks) are this project's.
"""
