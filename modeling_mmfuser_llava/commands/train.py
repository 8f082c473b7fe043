"""`mmfuser-llava train`: train MMFuser-LLaVA with the Transformers Trainer (stage 1, stage 2, LoRA/QLoRA).

Usage: mmfuser-llava train [CONFIG.yaml|CONFIG.json] [--name value ...]
Every flag of the original LLaVA/MMFuser scripts that still applies, and every `TrainingArguments` flag; flags after a
config file override its values. `mmfuser-llava train --help` lists them all. Several processes:
`torchrun --nproc_per_node N -m modeling_mmfuser_llava.cli train ...` or `accelerate launch -m ...` alike.
"""

import argparse

from . import example_epilog

EXAMPLE = "mmfuser-llava train configs/stage1_7b.yaml --output_dir checkpoints/stage1"


def register(subparsers) -> None:
    # prefix_chars="\0": every argument after `train` is handed, untouched, to HfArgumentParser.
    parser = subparsers.add_parser(
        "train", help=__doc__.split(": ", 1)[1].splitlines()[0], description=__doc__, add_help=False, prefix_chars="\0"
    )
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help="[CONFIG] --name value ...")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..training.arguments import parse_arguments
    from ..training.run import run_training

    run_training(*parse_arguments(args.arguments or ["--help"], epilog=example_epilog(EXAMPLE)))
    return 0
