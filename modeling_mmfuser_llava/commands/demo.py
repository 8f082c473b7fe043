"""`mmfuser-llava demo`: answer a question about an image, with the bundled tiny trained model unless --model is set."""

import argparse

EXAMPLE = "mmfuser-llava demo --prompt 'what colour are the small marks'"


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help=__doc__.split(": ", 1)[1], description=__doc__)
    parser.add_argument(
        "--model", help="Hub id or local folder; default: the bundled tiny model trained by `mmfuser-llava experiment`"
    )
    parser.add_argument("--image", help="image file; default: a bundled example picture")
    parser.add_argument(
        "--prompt", default=None, help="question about the image; default: the bundled example's first question"
    )
    parser.add_argument("--save-dir", help="where to write the tiny model's Hub folder (default: a temporary folder); "
                        "an existing folder is replaced only if it holds a previous demo's model folder")
    parser.add_argument("--overwrite", action="store_true", help="replace --save-dir whatever it holds")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--load-in-4bit", action="store_true", help="quantize the language model to 4 bits (nf4)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--save-boxes", metavar="FILE.png",
                        help="save the picture with the boxes the answer contains drawn on it, in its own frame")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from ..demo import run_demo

    try:
        result = run_demo(
            model=args.model,
            image=args.image,
            prompt=args.prompt,
            save_dir=args.save_dir,
            device=args.device,
            load_in_4bit=args.load_in_4bit,
            max_new_tokens=args.max_new_tokens,
            overwrite=args.overwrite,
            save_boxes_to=args.save_boxes,
        )
    except (FileExistsError, FileNotFoundError, ValueError) as error:
        print(f"mmfuser-llava demo: error: {error}", file=sys.stderr)
        return 2
    print(f"picture:      {result.image_path}")
    print(f"question:     {result.prompt}")
    print(f"answer:       {result.answer}")
    if result.expected is not None:
        print(f"right answer: {result.expected}")
    if result.boxes_path is not None:
        print(f"boxes:        {result.boxes_path}")
    print(f"model:        {result.model_path}")
    print(f"time:         {result.seconds:.2f} s (load through trust_remote_code + generate)")
    return 0
