"""Options shared by `convert` and `upcycle`: the output folder, the model card's facts, pushing to the Hub."""

import argparse
import sys
from collections.abc import Callable


def shard_size(text: str) -> int:
    """Bytes, or a size with a unit such as 5GB or 500MiB."""
    from transformers.utils.hub import convert_file_size_to_int

    try:
        return int(text) if text.isdigit() else convert_file_size_to_int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected bytes or a size such as 5GB, got {text!r}") from None


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True, metavar="OUT", help="folder to write (must be absent or empty)")
    parser.add_argument("--max-shard-size", type=shard_size, default="5GB",
                        help="largest output shard, in bytes or with a unit (default: 5GB)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    card = parser.add_argument_group("model card")
    card.add_argument("--license", default="llama2", help="license of the weights (default: llama2, Vicuna v1.5's)")
    card.add_argument("--base-model", action="append", default=[], metavar="REPO_ID",
                      help="a base model for the card's metadata (repeatable), e.g. lmsys/vicuna-7b-v1.5")
    card.add_argument("--dataset", action="append", default=[], metavar="REPO_ID",
                      help="a training dataset (repeatable; default: the LLaVA-1.5 recipe's data)")
    card.add_argument("--eval-results", metavar="FILE",
                      help="JSON list of huggingface_hub EvalResult fields measured on THIS checkpoint (model-index)")
    push = parser.add_argument_group("push")
    push.add_argument("--push-to-hub", metavar="REPO_ID", help="create this Hub repo and upload OUT to it")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--dry-run", action="store_true", help="list what --push-to-hub would upload; no network")


def check_output_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if (args.dry_run or args.private) and not args.push_to_hub:
        parser.error("--dry-run and --private go with --push-to-hub")


def card_info(args: argparse.Namespace, default_base_models: list[str] = ()):
    from ..conversion import ModelCardInfo, load_eval_results
    from ..conversion.model_card import LLAVA_15_DATASETS

    return ModelCardInfo(
        repo_id=args.push_to_hub,
        license=args.license,
        base_models=args.base_model or list(default_base_models),
        datasets=args.dataset or list(LLAVA_15_DATASETS),
        eval_results=load_eval_results(args.eval_results) if args.eval_results else [],
    )


def write_then_push(command: str, args: argparse.Namespace, write: Callable[[], object]) -> int:
    """Run `write()` (which writes args.output), print its summary, push if asked; bad input or a failed push ->
    message, exit code 2."""
    from ..conversion import ConversionError
    from ..conversion.push import PushError, describe_upload, push_folder

    try:
        print(write())
        if args.push_to_hub:
            files = push_folder(args.output, args.push_to_hub, private=args.private, dry_run=args.dry_run)
            if args.dry_run:
                print(describe_upload(args.push_to_hub, files, args.private))
            else:
                print(f"uploaded {len(files)} files to https://huggingface.co/{args.push_to_hub}")
    except (ConversionError, FileExistsError, PushError) as error:
        print(f"mmfuser-llava {command}: error: {error}", file=sys.stderr)
        return 2
    return 0
