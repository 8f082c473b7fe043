"""`mmfuser-llava make-synthetic-data`: a small seeded LLaVA-format dataset of drawn shapes, to try training on.

`--kind finegrained` writes the toy experiment's task instead (see `mmfuser-llava experiment`): train and test splits
of questions about tiny marks beside a large shape, with the captions for both pretrainings and both stages.
"""

import argparse

EXAMPLE = "mmfuser-llava make-synthetic-data synthetic --kind instructions"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "make-synthetic-data", help=__doc__.split(": ", 1)[1].splitlines()[0], description=__doc__
    )
    parser.add_argument("output_dir", help="folder to write data.json and images/ into")
    parser.add_argument("--num-samples", type=int, default=64, help="samples (finegrained: training pictures)")
    parser.add_argument("--num-test", type=int, default=300, help="finegrained only: test pictures")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--kind", choices=("captions", "instructions", "grounding", "finegrained"), default="instructions",
        help="captions: stage-1 style (--version plain); instructions: stage-2 style (--version v1); "
        "grounding: referring questions answered with a box on the padded square (--version v1); "
        "finegrained: the toy experiment's task",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..training.synthetic import IMAGE_DIR, make_synthetic_dataset

    if args.kind == "finegrained":
        from ..experiment import task

        folder = task.make_task_data(args.output_dir, args.num_samples, args.num_test, args.seed, args.overwrite)
        print("\n".join(f"{name}: {folder / file}" for name, file in task.FILES.items()))
        print(f"--image_folder {folder / task.IMAGE_DIR}")
        return 0

    data = make_synthetic_dataset(args.output_dir, args.num_samples, args.seed, args.kind, overwrite=args.overwrite)
    print(f"--data_path {data} --image_folder {data.parent / IMAGE_DIR}")
    return 0
