"""Start-up cost of the training data at the 665K mix's scale: `json.load` in every process against the Arrow cache.

`python -m benchmarks.training_data [--samples 665000] [--processes 4]` writes a seeded LLaVA-format file in the
665K instruction mix's layout (1 to 8 question/answer rounds, 1 sample in 16 text-only), then measures each loader in
fresh subprocesses, one after the other:
- today's loader, as `LazySupervisedDataset` read the file before the cache: `json.load` of the whole file, every
  entry parsed by `parse_record`, then `modality_lengths` summed over the parsed samples;
- the first build of the Arrow cache (hash, check, write, memory-map) and its `modality_lengths` column;
- a start from the cache, alone and in `--processes` processes at once memory-mapping the same table.

Per process: start time (the load and `modality_lengths`, imports excluded), extra RSS over the process after its
imports, peak RSS (VmHWM), and from /proc/<pid>/smaps_rollup the private and proportional (Pss) memory: RSS counts
every page of the memory-mapped table that a process touched, though all processes share those pages.
"""

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("the", "a", "shape", "picture", "red", "circle", "shows", "of", "in", "and", "what", "colour", "many",
         "there", "image", "describe", "detail", "person", "table", "street", "two", "left", "right", "is", "are")
SPLIT_TEXT_ONLY = 16
REPO_ROOT = Path(__file__).resolve().parents[1]


def words(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(low, high)))


def write_mix_file(path: Path, samples: int, seed: int = 0) -> None:
    """A JSON list in the 665K mix's layout: ids, image paths, 1-8 rounds of human/gpt turns (the image marker in
    the first question), one sample in 16 text-only; about 1.1 kB per sample, as the real file."""
    rng = random.Random(seed)
    with open(path, "w") as file:
        file.write("[")
        for index in range(samples):
            rounds = rng.randint(1, 8)
            conversation = []
            for _ in range(rounds):
                conversation.append({"from": "human", "value": words(rng, 5, 15)})
                conversation.append({"from": "gpt", "value": words(rng, 5, 45)})
            record = {"id": f"{index:012d}"}
            if index % SPLIT_TEXT_ONLY:
                record["image"] = f"coco/train2017/{index:012d}.jpg"
                conversation[0]["value"] = f"<image>\n{conversation[0]['value']}"
            record["conversations"] = conversation
            file.write(("," if index else "") + json.dumps(record))
        file.write("]\n")


def memory(pid: int | str = "self") -> dict[str, int]:
    """VmRSS and VmHWM (/proc/PID/status) and Rss, Pss, Anonymous (heap: what the process alone holds) and Private
    (heap and pages of files no other process maps) from /proc/PID/smaps_rollup, in bytes."""
    values = {}
    for name, keys in (("status", ("VmRSS", "VmHWM")), ("smaps_rollup", ("Rss", "Pss", "Anonymous", "Private_Clean",
                                                                         "Private_Dirty"))):
        for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in keys:
                values[key] = int(rest.split()[0]) * 1024
    values["Private"] = values.pop("Private_Clean") + values.pop("Private_Dirty")
    return values


def child(loader: str, data_path: str, cache_dir: str) -> None:
    """Load once, report on stdout, wait for a line on stdin (so that several processes are alive together), read
    every page of the table as an epoch would, then report the memory again, all of them mapping the table."""
    from modeling_mmfuser_llava.training.conversation import parse_record
    from modeling_mmfuser_llava.training.data import cached_samples, modality_length, table_modality_lengths

    before = memory()
    start, cpu_start = time.perf_counter(), time.process_time()
    if loader == "json.load":
        with open(data_path) as file:
            samples = [parse_record(record, index, "v1") for index, record in enumerate(json.load(file))]
        lengths = [modality_length(sample) for sample in samples]
    else:
        samples = cached_samples(data_path, "v1", cache_dir)
        lengths = table_modality_lengths(samples)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    report = {"seconds": seconds, "cpu_seconds": cpu_seconds, "samples": len(lengths), "before": before}
    print(json.dumps({**report, "after": memory()}), flush=True)
    sys.stdin.readline()
    if loader != "json.load":  # training reads every row in an epoch: map in every page of the table
        for column in samples.data.table.columns:
            for chunk in column.chunks:
                for buffer in chunk.buffers():
                    if buffer is not None:
                        hashlib.sha1(buffer)
    print("read", flush=True)
    sys.stdin.readline()
    print(json.dumps({"together": memory()}), flush=True)


def run_children(loader: str, data_path: Path, cache_dir: Path, processes: int) -> list[dict]:
    command = [sys.executable, "-m", "benchmarks.training_data", "--child", loader, str(data_path), str(cache_dir)]
    children = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
                for _ in range(processes)]
    reports = [json.loads(process.stdout.readline()) for process in children]
    for _ in range(2):  # every process reads the whole table, then every process reports its memory
        for process in children:
            process.stdin.write("go\n")
            process.stdin.flush()
        lines = [process.stdout.readline() for process in children]
    for process, report, line in zip(children, reports, lines):
        report.update(json.loads(line))
        process.stdin.close()
    for process in children:
        if process.wait(timeout=60):
            raise RuntimeError(f"a {loader} process failed")
    return reports


def row(name: str, reports: list[dict]) -> str:
    """Worst process of the run: start (wall and CPU), RSS added by the load and peak RSS; then, with every process
    alive and the whole table read, what each holds alone (Anonymous), its Pss and its RSS, over the process after
    its imports."""

    def worst(measure) -> float:
        return max(measure(report) for report in reports) / 2**20

    def extra(key: str, when: str = "together") -> float:
        return worst(lambda report: report[when][key] - report["before"][key])

    cells = [name, str(len(reports)), f"{max(r['seconds'] for r in reports):.1f} s",
             f"{max(r['cpu_seconds'] for r in reports):.1f} s", f"{extra('VmRSS', 'after'):.0f} MB",
             f"{worst(lambda report: report['after']['VmHWM']):.0f} MB", f"{extra('Anonymous'):.0f} MB",
             f"{extra('Pss'):.0f} MB", f"{extra('Rss'):.0f} MB"]
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=665_000)
    parser.add_argument("--processes", type=int, nargs="+", default=[4], help="processes mapping the cache at once")
    parser.add_argument("--folder", type=Path, default=None, help="where the file and cache go (default: a temp dir)")
    parser.add_argument("--child", nargs=3, metavar=("LOADER", "DATA", "CACHE"), help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.child:
        child(*arguments.child)
        return 0
    with tempfile.TemporaryDirectory(dir=arguments.folder) as folder:
        data_path, cache_dir = Path(folder) / "mix.json", Path(folder) / "cache"
        start = time.perf_counter()
        write_mix_file(data_path, arguments.samples)
        print(f"wrote {arguments.samples} samples, {data_path.stat().st_size / 2**20:.0f} MB, in "
              f"{time.perf_counter() - start:.0f} s; load average {os.getloadavg()[0]:.1f}", flush=True)
        old = run_children("json.load", data_path, cache_dir, 1)
        build = run_children("arrow", data_path, cache_dir, 1)
        rows = [row("today: json.load + parse_record + modality_lengths", old),
                row("Arrow cache, first build (hash, check, write, map)", build),
                row("Arrow cache, start from the cache", run_children("arrow", data_path, cache_dir, 1))]
        rows += [row("Arrow cache, start from the cache, processes at once", run_children("arrow", data_path,
                                                                                        cache_dir, count))
                 for count in arguments.processes]
        print("| loader | processes | start (wall) | start (CPU) | extra RSS after start | peak RSS | all alive, table "
              "read: extra anonymous | extra Pss | extra RSS |")
        print("|---|---|---|---|---|---|---|---|---|")
        print("\n".join(rows))
        print(f"first build / today's load: {build[0]['cpu_seconds'] / old[0]['cpu_seconds']:.2f}x CPU, "
              f"{build[0]['seconds'] / old[0]['seconds']:.2f}x wall; load average after {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
