"""The one error type of the conversion tools: bad input that the user must fix, named precisely."""


class ConversionError(ValueError):
    """A checkpoint, a setting or a file the conversion cannot use; the message says which and why."""


__all__ = ["ConversionError"]
