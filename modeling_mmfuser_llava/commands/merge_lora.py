"""`mmfuser-llava merge-lora`: fold a LoRA/QLoRA run into its base model, as a full trust_remote_code checkpoint."""

import argparse

EXAMPLE = "mmfuser-llava merge-lora lora-run merged-model"


def register(subparsers) -> None:
    parser = subparsers.add_parser("merge-lora", help=__doc__.split(": ", 1)[1], description=__doc__)
    parser.add_argument("adapter_dir", help="output folder of a `train --lora_enable True` run")
    parser.add_argument("output_dir", help="where to write the merged model")
    parser.add_argument(
        "--base-model", help="MMFuser-LLaVA checkpoint to merge into; default: rebuild the run's base from its record"
    )
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..training.lora import merge_lora

    output = merge_lora(
        args.adapter_dir, args.output_dir, base_model=args.base_model, dtype=getattr(torch, args.dtype),
        overwrite=args.overwrite,
    )
    print(f"merged model written to {output}")
    return 0
