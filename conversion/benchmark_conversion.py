"""Conversion benchmark: peak memory and throughput of `mmfuser-llava convert` on a synthetic multi-GB checkpoint.

Builds a checkpoint in the authors' layout (Vicuna-7B widths, CLIP ViT-L/14-336 inside, random weights) with source
shards of --shard-size-gb, then measures, each in a fresh subprocess: a bare interpreter (`python -c pass`), the
conversion's fixed overhead (interpreter, torch and transformers imports, tokenizer, planning: no weights read) and the
full conversion with output shards of the same size. Prints the peak RSS of all three, the largest shard, the
conversion's peak above each baseline per largest shard (above the fixed overhead: what reading and writing the
weights costs, target <= 1.5; above the bare interpreter: everything the command adds), and MB/s.

Everything heavy runs in child processes and this script imports neither torch nor the library: Linux carries a
process's peak RSS across fork and exec, so a large parent would inflate the children's figures.

    PYTHONPATH=. python conversion/benchmark_conversion.py [--size-gb 3] [--shard-size-gb 1] [--format bin]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PLAN_ONLY = (
    "import sys; from modeling_mmfuser_llava.conversion.converter import plan_conversion; "
    "plan_conversion(sys.argv[1])"
)
WRITE_SYNTHETIC = (
    "import sys; from modeling_mmfuser_llava.conversion.synthetic import write_synthetic_checkpoint; "
    "write_synthetic_checkpoint(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])"
)


def run_measured(command: list[str]) -> tuple[float, int]:
    """Seconds and peak RSS (bytes) of `command` run as a child process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"{command} failed with exit code {child.returncode}")
    return time.perf_counter() - start, usage.ru_maxrss * 1024  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=3.0, help="approximate checkpoint size (default 3)")
    parser.add_argument("--shard-size-gb", type=float, default=1.0, help="source and output shard size (default 1)")
    parser.add_argument("--format", choices=("safetensors", "bin"), default="safetensors", help="source shards")
    parser.add_argument("--workdir", help="where to write the checkpoints (default: the system's temp folder)")
    args = parser.parse_args()

    shard_bytes = int(args.shard_size_gb * 1e9)
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="mmfuser-conversion-benchmark-") as scratch:
        written, _ = run_measured([sys.executable, "-c", WRITE_SYNTHETIC, scratch, str(int(args.size_gb * 1e9)),
                                   str(shard_bytes), args.format])
        print(f"synthetic checkpoint written in {written:.0f} s")
        checkpoint, output_dir = Path(scratch) / "checkpoint", Path(scratch) / "converted"
        _, bare = run_measured([sys.executable, "-c", "pass"])
        _, baseline = run_measured([sys.executable, "-c", PLAN_ONLY, str(checkpoint)])
        seconds, peak = run_measured([
            sys.executable, "-m", "modeling_mmfuser_llava.cli", "convert", "--checkpoint", str(checkpoint),
            "--output", str(output_dir), "--max-shard-size", str(shard_bytes), "--no-progress",
        ])
        source_shards = [path.stat().st_size for path in checkpoint.glob(f"*.{args.format}")]
        output_shards = [path.stat().st_size for path in output_dir.glob("*.safetensors")]
        largest = max(source_shards + output_shards)
        total = sum(output_shards)
    gb = 1e9
    print(f"checkpoint: {sum(source_shards) / gb:.2f} GB in {len(source_shards)} {args.format} shards -> "
          f"{total / gb:.2f} GB in {len(output_shards)} safetensors shards; largest shard {largest / gb:.2f} GB")
    print(f"peak RSS: conversion {peak / gb:.2f} GB, fixed overhead (imports, tokenizer, planning; no weights) "
          f"{baseline / gb:.2f} GB, bare interpreter {bare / gb:.3f} GB")
    print(f"(peak - fixed overhead) / largest shard = {(peak - baseline) / largest:.2f}   (target <= 1.5)")
    print(f"(peak - bare interpreter) / largest shard = {(peak - bare) / largest:.2f}")
    print(f"peak / largest shard = {peak / largest:.2f}")
    print(f"throughput: {total / 1e6 / seconds:.0f} MB/s ({seconds:.1f} s for the whole conversion command)")


if __name__ == "__main__":
    main()
