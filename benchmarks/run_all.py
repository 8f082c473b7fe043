"""Run every benchmark of the Performance section and print its table: `python -m benchmarks.run_all`.

Random weights at the real sizes (CLIP ViT-L/14-336, LLaVA-1.5-7B's projector), on the CPU. Each ratio compares
candidates measured side by side in one run, in interleaved rounds, as medians (see benchmarks/timing.py).
"""

import argparse
import os
import sys
import time

# On a shared machine, OpenMP threads that spin while they wait compete with the other jobs for the cores, and code
# made of many short operations then measures the scheduler rather than its own work. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="float32 only, fewer rounds, no footprint (a few minutes)")
    parser.add_argument("--vision-batch-8", action="store_true", help="also time (c) at batch 8 (adds minutes)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, all cores)")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per call in (d)")
    return parser.parse_args(argv)


def markdown_table(results) -> str:
    lines = [
        "| measurement | setting | ours | baseline | ratio (wall) | ratio (CPU) | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        cpu = "" if r.cpu_ratio is None else f"{r.cpu_ratio:.3f}"
        cells = [r.measurement, r.setting, r.ours, r.baseline, f"{r.ratio:.3f}", cpu, r.target]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    import torch

    from .footprint import measure_footprints
    from .fuser import measure_fuser
    from .generation import measure_generation
    from .timing import load_average
    from .vision import measure_vision_path

    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    dtypes = [torch.float32] if arguments.quick else [torch.float32, torch.bfloat16]
    # Rounds: a few for the long calls, more (2 * rounds + 1) where a ratio near 1 must be resolved to a few percent.
    rounds = 2 if arguments.quick else 3
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, OMP_WAIT_POLICY="
        f"{os.environ['OMP_WAIT_POLICY']}, load average before: {load_average()}",
        flush=True,
    )
    start = time.perf_counter()
    steps = []
    for dtype in dtypes:
        steps += [
            lambda dtype=dtype: measure_fuser(dtype, 1, rounds=2 * rounds + 1),
            lambda dtype=dtype: measure_fuser(dtype, 8, rounds=rounds),
            lambda dtype=dtype: measure_vision_path(dtype, 1, 2 * rounds + 1),
        ]
        if arguments.vision_batch_8:
            steps.append(lambda dtype=dtype: measure_vision_path(dtype, 8, 2))
        steps.append(lambda dtype=dtype: measure_generation(dtype, 2 * rounds + 1, arguments.new_tokens))
    if not arguments.quick:
        steps.append(measure_footprints)
    results = []
    for step in steps:
        for result in step():
            results.append(result)
            print(f"{result.measurement} [{result.setting}]: {result.ratio:.3f}", file=sys.stderr, flush=True)
    print(markdown_table(sorted(results, key=lambda result: result.measurement[:3])))
    print(f"\n{time.perf_counter() - start:.0f} s; load average after: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
