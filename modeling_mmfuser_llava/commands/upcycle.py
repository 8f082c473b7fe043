"""`mmfuser-llava upcycle`: add a freshly initialised fuser to a transformers Llava checkpoint (outputs unchanged)."""

import argparse

from .output_options import add_output_arguments, card_info, check_output_arguments, write_then_push

EXAMPLE = "mmfuser-llava upcycle --base llava-hf/llava-1.5-7b-hf --output llava-1.5-7b-mmfuser-init"


def parse_layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices such as -22,-17,-12,-7, got {text!r}")


def register(subparsers) -> None:
    parser = subparsers.add_parser("upcycle", help=__doc__.split(": ", 1)[1], description=__doc__)
    parser.add_argument("--base", required=True, help="transformers Llava checkpoint: folder or Hub id")
    parser.add_argument("--key-value-layers", type=parse_layers, metavar="LAYERS",
                        help="vision layers the fuser attends to, e.g. --key-value-layers=-22,-17,-12,-7 (the default)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fuser's initialisation")
    add_output_arguments(parser)
    parser.set_defaults(run=lambda args: run(args, parser))


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    check_output_arguments(parser, args)
    from ..conversion.upcycle import upcycle_llava

    return write_then_push("upcycle", args, lambda: upcycle_llava(
        args.base,
        args.output,
        key_value_layers=args.key_value_layers,
        seed=args.seed,
        overwrite=args.overwrite,
        max_shard_size=args.max_shard_size,
        card=card_info(args),
    ))
