"""`mmfuser-llava web`: a chat page about a picture in the browser (Gradio), or a Hugging Face Space that serves it."""

import argparse
import sys

EXAMPLE = "mmfuser-llava web --model path/to/mmfuser-llava-folder --port 7860"


def register(subparsers) -> None:
    parser = subparsers.add_parser("web", help=__doc__.split(": ", 1)[1], description=__doc__)
    parser.add_argument(
        "--model", help="Hub id or local folder; default: the bundled tiny model trained by `mmfuser-llava experiment`"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default: 7860)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--load-in-4bit", action="store_true", help="quantize the language model to 4 bits (nf4)")
    parser.add_argument("--max-megapixels", type=float, default=40.0,
                        help="refuse larger pictures, before decoding them (default: 40)")
    parser.add_argument("--max-seconds", type=float, default=60.0,
                        help="stop each answer after this many seconds: one queue serves everyone (default: 60)")
    space = parser.add_argument_group("Hugging Face Space")
    space.add_argument("--write-space", metavar="DIR",
                       help="write a Space folder (app.py, requirements.txt, README.md) serving --model, and exit")
    space.add_argument("--space-id", metavar="SPACE_ID", help="the Space's Hub id, for the API example of its README")
    space.add_argument("--overwrite", action="store_true", help="replace a non-empty DIR")
    parser.set_defaults(run=lambda args: run(parser, args))


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise SystemExit("web needs gradio: pip install 'mmfuser-llava[web]'") from None
    from ..web import WebDemoError, serve
    from ..web_space import write_space

    if args.write_space:
        if not args.model:
            parser.error("--write-space needs --model: the Hub repo the Space serves")
        try:
            folder = write_space(args.write_space, args.model, args.load_in_4bit, args.overwrite, args.space_id)
            print(f"wrote {folder}")
        except FileExistsError as error:
            print(f"mmfuser-llava web: error: {error}", file=sys.stderr)
            return 2
        return 0
    try:
        serve(args.model, host=args.host, port=args.port, device=args.device, load_in_4bit=args.load_in_4bit,
              max_pixels=int(args.max_megapixels * 1e6), max_seconds=args.max_seconds)
    except WebDemoError as error:
        print(f"mmfuser-llava web: error: {error}", file=sys.stderr)
        return 2
    return 0
