"""`mmfuser-llava`: one subcommand per module of `modeling_mmfuser_llava.commands`.

Each command module defines `register(subparsers)`, which adds its parser and sets `run(args) -> int`. Commands import
their heavy dependencies inside `run`, so `mmfuser-llava --help` stays fast.
"""

import argparse
import importlib

COMMANDS = (
    "demo",
    "visualize",
    "train",
    "merge_lora",
    "make_synthetic_data",
    "experiment",
    "convert",
    "upcycle",
    "card",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmfuser-llava", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__package__}.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
