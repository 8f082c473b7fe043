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


ROWS = {
    "fuser": "(a), (b): the fuser against its linear layers and the per-level core",
    "vision": "(c): the vision path against plain Llava's, batch 1 and 4",
    "generate": "(d): generate against plain Llava",
    "footprint": "(e): 4-bit and 8-bit footprints",
    "training": "(f): a stage-2 training step against plain Llava's",
    "fuser-training": "(f): the fuser's forward + backward against its linear layers'",
    "memory": "(f): the peak activation memory of that training step",
    "compile": "(g): the fuser compiled with inductor against eager mode (compiles for minutes first)",
}


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="float32 only, no footprint")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS), help="rows to measure (default all): "
                        + "; ".join(f"{name} {what}" for name, what in ROWS.items()))
    parser.add_argument("--rounds", type=int, default=5, help="timed interleaved rounds of every ratio (default 5)")
    parser.add_argument("--vision-batches", type=int, nargs="+", default=[1, 4], help="batches of (c) (default 1 4)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, all cores)")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per call in (d)")
    return parser.parse_args(argv)


def markdown_table(results) -> str:
    lines = [
        "| measurement | setting | ours | baseline | ratio (wall) | ratio (CPU) | CPU spread (rounds) | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        cpu = "" if r.cpu_ratio is None else f"{r.cpu_ratio:.3f}"
        spread = "" if r.spread is None else f"{r.spread[0]:.3f}-{r.spread[1]:.3f} ({r.rounds})"
        cells = [r.measurement, r.setting, r.ours, r.baseline, f"{r.ratio:.3f}", cpu, spread, r.target]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    import torch

    from .compiled import measure_compiled_fuser
    from .footprint import measure_footprints
    from .fuser import measure_fuser
    from .generation import measure_generation
    from .timing import load_average
    from .training import measure_activation_memory, measure_fuser_training, measure_training
    from .vision import measure_vision_path

    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    dtypes = [torch.float32] if arguments.quick else [torch.float32, torch.bfloat16]
    rounds = arguments.rounds
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, OMP_WAIT_POLICY="
        f"{os.environ['OMP_WAIT_POLICY']}, load average before: {load_average()}",
        flush=True,
    )
    start = time.perf_counter()
    steps = []
    for dtype in dtypes:
        if "fuser" in arguments.rows:
            steps += [lambda dtype=dtype, batch=batch: measure_fuser(dtype, batch, rounds) for batch in (1, 8)]
        if "vision" in arguments.rows:
            steps += [
                lambda dtype=dtype, batch=batch: measure_vision_path(dtype, batch, rounds)
                for batch in arguments.vision_batches
            ]
        if "generate" in arguments.rows:
            steps.append(lambda dtype=dtype: measure_generation(dtype, rounds, arguments.new_tokens))
    if "memory" in arguments.rows:
        steps.append(lambda: measure_activation_memory(2))
    if "fuser-training" in arguments.rows:
        steps.append(lambda: measure_fuser_training(2, rounds))
    if "training" in arguments.rows:
        steps.append(lambda: measure_training(2, rounds))
    if "compile" in arguments.rows:
        steps.append(lambda: measure_compiled_fuser(rounds))
    if "footprint" in arguments.rows and not arguments.quick:
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
