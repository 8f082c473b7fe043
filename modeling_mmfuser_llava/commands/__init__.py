"""Subcommands of the `mmfuser-llava` CLI: thin argument parsing over library functions."""


def example_epilog(example: str) -> str:
    """The help's closing lines: a command a user can copy."""
    return f"example:\n  {example}"
