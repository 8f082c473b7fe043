"""Stand-in for transformers' tests/exporters/test_export.py, which its source distribution does not include.

`ModelTesterMixin` derives from `ExportTesterMixin`; its `torch.export` tests are therefore not run by this suite.
"""


class ExportTesterMixin:
    """Empty: no export tests."""
