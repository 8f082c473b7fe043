"""`mmfuser-llava card`: put measured evaluation results into the model card (README.md) of a model folder.

`--eval-results` takes lmms-eval's output (the `--output_path` folder of `python -m lmms_eval --model mmfuser_llava`,
or one `*_results.json` in it) or a JSON list of huggingface_hub EvalResult fields; each number goes into the card's
`model-index` and its Evaluation table as measured, with lmms-eval's version as its source.
"""

import argparse
import sys

EXAMPLE = "mmfuser-llava card mmfuser-llava-7b --eval-results lmms-eval-results/"


def register(subparsers) -> None:
    parser = subparsers.add_parser("card", help=__doc__.split(": ", 1)[1].splitlines()[0], description=__doc__)
    parser.add_argument("folder", help="the model folder whose README.md to update (written by convert, upcycle, ...)")
    parser.add_argument("--eval-results", required=True, metavar="PATH",
                        help="lmms-eval's results folder or *_results.json, or a JSON list of EvalResult fields")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..conversion import ConversionError
    from ..conversion.model_card import load_eval_results, refresh_eval_results

    try:
        results = load_eval_results(args.eval_results)
        card = refresh_eval_results(args.folder, results)
    except ConversionError as error:
        print(f"mmfuser-llava card: error: {error}", file=sys.stderr)
        return 2
    print(f"{card}: {len(results)} evaluation results written")
    return 0
