"""Options shared by `convert` and `upcycle`: the model card's facts and pushing the result to the Hub."""

import argparse


def add_hub_arguments(parser: argparse.ArgumentParser) -> None:
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


def check_hub_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
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


def push_if_requested(args: argparse.Namespace) -> None:
    if not args.push_to_hub:
        return
    from ..conversion.push import describe_upload, push_folder

    files = push_folder(args.output, args.push_to_hub, private=args.private, dry_run=args.dry_run)
    if args.dry_run:
        print(describe_upload(args.push_to_hub, files, args.private))
    else:
        print(f"uploaded {len(files)} files to https://huggingface.co/{args.push_to_hub}")
