"""`mmfuser-llava visualize`: draw what the fuser sees for one image (the paper's Figures 5 and 1(a)) into a PNG."""

import argparse

EXAMPLE = "mmfuser-llava visualize --model your-org/mmfuser-llava-1.5-7b --image photo.jpg --output maps.png"


def register(subparsers) -> None:
    parser = subparsers.add_parser("visualize", help=__doc__.split(": ", 1)[1], description=__doc__)
    parser.add_argument("--model", required=True, help="Hub id or local folder of an MMFuser-LLaVA model")
    parser.add_argument("--image", help="image file; default: the bundled example image")
    parser.add_argument("--output", required=True, help="PNG file to write")
    parser.add_argument(
        "--reduction",
        choices=("norm", "pca"),
        default="norm",
        help="how each token's features become one pixel: channel L2 norm or first principal component (default: norm)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit("visualize needs matplotlib: pip install 'mmfuser-llava[visualize]'") from None
    from ..demo import EXAMPLE_IMAGE
    from ..visualize import visualize

    maps = visualize(args.model, args.image or EXAMPLE_IMAGE, args.output, args.reduction, args.device)
    similarity = " ".join(f"{value:.2f}" for value in maps.layer_similarity)
    print(f"wrote {args.output}")
    print(f"cosine similarity of hidden states 0..{len(maps.layer_similarity) - 1} to the final layer: {similarity}")
    return 0
