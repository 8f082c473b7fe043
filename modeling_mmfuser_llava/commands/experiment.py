"""`mmfuser-llava experiment`: the paper's claim at toy scale, LLaVA vs simple fusions vs MMFuser on a CPU.

Draws a fine-grained synthetic task, pretrains a tiny CLIP on it contrastively, trains every model with the same
two-stage budget and seeds, and prints test accuracy (mean ± std over seeds) as a Markdown table. With `--study`,
runs the paper's comparison or ablations as resumable studies (one cached file per run and seed) and reports 95%
intervals and paired tests against MMFuser, with a figure.
"""

import argparse
import logging
from dataclasses import replace

EXAMPLE = "mmfuser-llava experiment results --workers 2"


def register(subparsers) -> None:
    from ..experiment import FUSIONS  # light: no torch import
    from ..experiment.studies import STUDIES

    parser = subparsers.add_parser("experiment", help=__doc__.split(": ", 1)[1].splitlines()[0], description=__doc__)
    parser.add_argument("output_dir", help="folder for the data, base models, runs, results.json and results.md")
    parser.add_argument("--study", nargs="+", choices=[*STUDIES, "all"],
                        help="resumable studies instead of the one-off comparison: main (Table I's models, 8 seeds), "
                        "layers (Table VI), attention (Table VII), modules (Table VIII), 5 seeds each; all: the four")
    parser.add_argument("--seeds", type=int, nargs="+",
                        help="seeds (default 0 1 2; with --study, each study's own count from 0)")
    parser.add_argument("--models", nargs="+", choices=list(FUSIONS),
                        help="llava: the penultimate layer alone; concat, average: Table I; mmfuser: the paper's "
                        "(default: all four; not with --study, whose rows are fixed)")
    parser.add_argument("--workers", type=int, default=2,
                        help="runs trained at once, one CPU thread each (and the threads of the shared pretraining: "
                        "exact numbers depend on it)")
    parser.add_argument("--num-train", type=int, default=4000, help="training pictures")
    parser.add_argument("--num-test", type=int, default=300, help="test pictures (four questions each)")
    parser.add_argument("--marks-across-patches", action="store_true",
                        help="the harder task: every mark astride two patches, so no patch token holds its pattern")
    parser.add_argument("--grounding", action="store_true",
                        help="mix referring questions on non-square pictures into stage 2 (as many pictures again) and "
                        "report each model's precision at IoU 0.5")
    parser.add_argument("--max-steps", type=int, default=-1, help="cap each stage's steps (a quick check)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--bundle-demo-model", action="store_true",
                        help="make the best MMFuser run the package's demo model (for the project's maintainers)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..experiment import FUSIONS
    from ..experiment.comparison import ExperimentSettings, format_table, run_experiment
    from ..experiment.recipe import RecipeBudget

    settings = ExperimentSettings(models=tuple(args.models or FUSIONS), num_train=args.num_train, num_test=args.num_test,
                                  marks_across_patches=args.marks_across_patches, grounding=args.grounding,
                                  budget=RecipeBudget(max_steps=args.max_steps))
    if args.study:
        return run_studies_command(args, settings)
    if args.seeds:
        settings = replace(settings, seeds=tuple(args.seeds))
    results = run_experiment(args.output_dir, settings, workers=args.workers, overwrite=args.overwrite)
    print(format_table(results["summary"], len(settings.seeds)))
    print(f"\n{len(results['runs'])} runs in {results['seconds']:.0f} s; results in {args.output_dir}")
    if args.bundle_demo_model:
        from pathlib import Path

        from ..experiment.comparison import BEST_MMFUSER_DIR
        from ..experiment.demo_model import bundle_demo_model

        output_dir = Path(args.output_dir)
        examples = bundle_demo_model(output_dir / BEST_MMFUSER_DIR, output_dir / "task")
        print(f"bundled {output_dir / BEST_MMFUSER_DIR} as the demo model, with {len(examples)} example pictures")
    return 0


def run_studies_command(args: argparse.Namespace, settings) -> int:
    from ..experiment.studies import STUDIES
    from ..experiment.study_report import write_report
    from ..experiment.study_runs import run_studies

    if args.bundle_demo_model or args.overwrite:
        raise SystemExit("--study resumes its folder and bundles nothing: drop --overwrite/--bundle-demo-model")
    if args.models:
        raise SystemExit("--study trains its own rows: drop --models, or pick the studies with --study")
    studies = list(STUDIES) if "all" in args.study else list(dict.fromkeys(args.study))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("modeling_mmfuser_llava").setLevel(logging.INFO)
    results = run_studies(args.output_dir, studies, tuple(args.seeds) if args.seeds else None, settings, args.workers)
    report = write_report(args.output_dir, results)
    print(report)
    return 0
