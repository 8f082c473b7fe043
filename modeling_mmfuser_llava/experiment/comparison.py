"""The whole experiment: task data, base models, what each tower layer holds, every fusion x seed through the
two-stage recipe, test accuracy.

Runs go to a pool of worker processes with one torch thread each: on a CPU that is faster than threads inside one
run (the models are tiny). Every run is seeded and single-threaded, but the shared pretraining before them runs on
`workers` threads, and its float sums may round differently with another thread count: the results are bit-for-bit
reproducible for the same `workers` on the same machine type and versions (tested), not promised across `workers`.
"""

import json
import multiprocessing
import shutil
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import __version__

from ..hub_folder import staged_output
from .base_models import write_base_models
from .evaluation import evaluate, evaluate_grounding
from .layer_probe import probe_layers
from .recipe import FUSIONS, RecipeBudget, train_two_stages
from .task import FILES, QUESTIONS, make_task_data

RESULTS_FILE = "results.json"
TABLE_FILE = "results.md"
BEST_MMFUSER_DIR = "best-mmfuser"
GROUPS = ("all", "fine", "coarse", *QUESTIONS)
# precision@0.5 on the named shape and on the other one, in the grounding variant's results only
GROUNDING_GROUP = ("grounding", "grounding_other")


@dataclass(frozen=True)
class ExperimentSettings:
    seeds: tuple[int, ...] = (0, 1, 2)
    models: tuple[str, ...] = tuple(FUSIONS)
    num_train: int = 4000
    num_test: int = 300
    data_seed: int = 0
    probe_steps: int = 400  # training steps of each layer probe
    marks_across_patches: bool = False  # the harder variant of the task (see `task`)
    grounding: bool = False  # referring questions mixed into stage 2, and precision@0.5 (see `task`)
    budget: RecipeBudget = RecipeBudget()


def prepare_task_and_base_models(output_dir: Path, settings: ExperimentSettings, workers: int) -> dict:
    """`task/`, `base/llm` and `base/clip` in `output_dir`, on `workers` threads; returns the first and last loss of
    each pretraining and the layer probe, for the results."""
    make_task_data(output_dir / "task", settings.num_train, settings.num_test, settings.data_seed,
                   marks_across_patches=settings.marks_across_patches, grounding=settings.grounding)
    torch.set_num_threads(workers)
    _, clip, pretraining_losses = write_base_models(output_dir / "task", output_dir / "base", seed=settings.data_seed)
    layer_probe = probe_layers(clip, output_dir / "task", settings.probe_steps, seed=settings.data_seed)
    return {"pretraining_loss": pretraining_losses, "layer_probe": layer_probe}


def train_and_score(fuser: dict[str, str], seed: int, shared_dir: Path, run_dir: Path, budget: RecipeBudget) -> dict:
    """Train the fuser `fuser` describes (see `recipe.fuser_flags`) with one seed on one thread into `run_dir`, from
    the task and base models of `shared_dir`, and score it; runs in a worker process."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    checkpoint = train_two_stages(fuser, seed, shared_dir / "base" / "llm", shared_dir / "base" / "clip",
                                  shared_dir / "task", run_dir, budget)
    accuracy = evaluate(checkpoint, shared_dir / "task")
    if (shared_dir / "task" / FILES["grounding_test"]).is_file():
        accuracy |= evaluate_grounding(checkpoint, shared_dir / "task")
    return {"checkpoint": checkpoint, "accuracy": accuracy, "seconds": time.perf_counter() - start}


def one_run(model: str, seed: int, output_dir: Path, settings: ExperimentSettings) -> dict:
    """One model of the comparison with one seed, trained into `runs/MODEL-seedSEED`."""
    result = train_and_score({"--fuser_fusion": FUSIONS[model]}, seed, output_dir,
                             output_dir / "runs" / f"{model}-seed{seed}", settings.budget)
    return {"model": model, "seed": seed, **result, "checkpoint": str(result["checkpoint"].relative_to(output_dir))}


def run_experiment(output_dir: str | Path, settings: ExperimentSettings = ExperimentSettings(), workers: int = 2,
                   overwrite: bool = False) -> dict:
    """Run everything into `output_dir`, all or nothing; returns the results also written to `results.json` and
    `results.md` (checkpoint paths relative to `output_dir`).

    The best MMFuser run (by overall test accuracy, ties to the lower seed) is copied to `best-mmfuser/`. The shared
    pretraining runs on `workers` threads, the runs on one thread each: the numbers are exactly reproducible for the
    same `workers` on the same machine type and versions.
    """
    unknown = sorted(set(settings.models) - set(FUSIONS))
    if unknown:
        raise ValueError(f"unknown models {unknown}: choose among {list(FUSIONS)}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    start = time.perf_counter()
    with staged_output(output_dir, overwrite) as staging:
        shared = prepare_task_and_base_models(staging, settings, workers)
        jobs = [(model, seed) for seed in settings.seeds for model in settings.models]
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(one_run, model, seed, staging, settings) for model, seed in jobs]
            runs = [future.result() for future in futures]
        results = {"settings": asdict(settings), "workers": workers,
                   "versions": {"torch": torch.__version__, "transformers": __version__},
                   **shared, "runs": runs, "summary": summarize(runs, settings.models),
                   "seconds": time.perf_counter() - start}
        (staging / RESULTS_FILE).write_text(json.dumps(results, indent=1) + "\n")
        (staging / TABLE_FILE).write_text(format_table(results["summary"], len(settings.seeds)) + "\n\n"
                                          + format_probe_table(shared["layer_probe"]) + "\n")
        mmfuser_runs = [run for run in runs if run["model"] == "mmfuser"]
        if mmfuser_runs:
            best = max(mmfuser_runs, key=lambda run: (run["accuracy"]["all"], -run["seed"]))
            shutil.copytree(staging / best["checkpoint"], staging / BEST_MMFUSER_DIR)
    return results


def summarize(runs: list[dict], models: tuple[str, ...]) -> dict[str, dict[str, tuple[float, float]]]:
    """Per model and question group: mean and sample standard deviation of the accuracy over seeds."""
    summary = {}
    for model in models:
        scores = [run["accuracy"] for run in runs if run["model"] == model]
        summary[model] = {
            group: (statistics.mean(s[group] for s in scores),
                    statistics.stdev(s[group] for s in scores) if len(scores) > 1 else 0.0)
            for group in GROUPS + GROUNDING_GROUP if group in scores[0]
        }
    return summary


def format_table(summary: dict[str, dict[str, tuple[float, float]]], num_seeds: int) -> str:
    """A Markdown table: test accuracy (and the grounding variant's precision@0.5) in %, mean ± standard deviation
    over the seeds."""
    columns = list(next(iter(summary.values())))
    header = f"| model ({num_seeds} seeds) | " + " | ".join(columns) + " |"
    rows = [header, "|" + "---|" * (len(columns) + 1)]
    for model, groups in summary.items():
        cells = [f"{100 * mean:.1f} ± {100 * spread:.1f}" for mean, spread in (groups[g] for g in columns)]
        rows.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def format_probe_table(layer_probe: dict[str, list[float]]) -> str:
    """A Markdown table: per fact, the probe's test accuracy (%) on each hidden state of the frozen tower."""
    num_states = len(next(iter(layer_probe.values())))
    rows = ["| fact | " + " | ".join(f"h{index}" for index in range(num_states)) + " |",
            "|" + "---|" * (num_states + 1)]
    rows += [f"| {kind} | " + " | ".join(f"{100 * value:.0f}" for value in values) + " |"
             for kind, values in layer_probe.items()]
    return "\n".join(rows)


__all__ = ["BEST_MMFUSER_DIR", "ExperimentSettings", "format_probe_table", "format_table",
           "prepare_task_and_base_models", "run_experiment", "summarize", "train_and_score"]
