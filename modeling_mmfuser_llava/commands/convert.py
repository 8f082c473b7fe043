"""`mmfuser-llava convert`: turn a checkpoint of the authors' code (original LLaVA layout) into a Hub-ready folder."""

import argparse

from .output_options import add_output_arguments, card_info, check_output_arguments, write_then_push

EXAMPLE = "mmfuser-llava convert --checkpoint path/to/original-checkpoint --output mmfuser-llava-7b"


def register(subparsers) -> None:
    parser = subparsers.add_parser("convert", help=__doc__.split(": ", 1)[1], description=__doc__)
    parser.add_argument("--checkpoint", required=True, metavar="SRC", help="original checkpoint: folder or Hub id")
    parser.add_argument("--vision-tower", metavar="VT",
                        help="CLIP checkpoint (folder or Hub id) for the vision config, and for the vision weights "
                             "when SRC has none; default: SRC's mm_vision_tower")
    parser.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), help="default: SRC's dtype")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_output_arguments(parser)
    parser.set_defaults(run=lambda args: run(args, parser))


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    check_output_arguments(parser, args)
    from ..conversion import convert_checkpoint

    return write_then_push("convert", args, lambda: convert_checkpoint(
        args.checkpoint,
        args.output,
        vision_tower=args.vision_tower,
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
        overwrite=args.overwrite,
        card=card_info(args),
        progress=not args.no_progress,
    ))
