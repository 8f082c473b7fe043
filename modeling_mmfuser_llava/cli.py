"""The `mmfuser-llava` command line: one subcommand per module of `modeling_mmfuser_llava.commands`.

Each command module defines `EXAMPLE` (a command line shown under its help) and `register(subparsers)`, which adds its
parser and sets `run(args) -> int`. Commands import their heavy dependencies inside `run`, so `--help` stays fast.
"""

import argparse
import importlib

from .commands import example_epilog

DESCRIPTION = (
    "Chat with, convert, fine-tune and inspect MMFuser-LLaVA models: LLaVA-1.5 that sees a fusion of several CLIP "
    "layers (arXiv:2410.11829). Every folder these commands write loads in Transformers with trust_remote_code=True."
)
COMMAND_HELP = "`mmfuser-llava COMMAND --help`: a command's options and an example."
COMMANDS = (
    "demo",
    "visualize",
    "train",
    "merge_lora",
    "make_synthetic_data",
    "experiment",
    "convert",
    "upcycle",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmfuser-llava", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"{example_epilog('mmfuser-llava demo')}\n\n{COMMAND_HELP}",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        command = importlib.import_module(f"{__package__}.commands.{name}")
        command.register(subparsers)
        command_parser = subparsers.choices[name.replace("_", "-")]
        command_parser.epilog = example_epilog(command.EXAMPLE)
        command_parser.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
