"""Subcommands of the `mmfuser-llava` CLI: thin argument parsing over library functions."""
