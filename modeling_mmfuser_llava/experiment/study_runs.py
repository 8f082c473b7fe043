"""Running the named studies (see `studies`): resumable, one cached result file per (run, seed).

`OUTPUT_DIR/shared/` holds the task, the base models and `settings.json` (what they were made with); each trained run
is `OUTPUT_DIR/runs/RUN/seedN/` with its result in `OUTPUT_DIR/runs/RUN/seedN.json`, written last, in one rename.
So a study stopped at any point resumes where it was, seeds can be added later, and rows that several studies share
are trained once. A folder made with other settings (data, budget, `workers`, versions) is refused: its runs would
not be comparable with new ones. Every run is single-threaded and seeded, so a cached run, trained again, gives the
same numbers on the same machine type and versions (tested).
"""

import json
import logging
import multiprocessing
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import __version__

from ..hub_folder import staged_output
from .comparison import ExperimentSettings, prepare_task_and_base_models, train_and_score
from .recipe import RecipeBudget
from .studies import RUNS, STUDIES

logger = logging.getLogger(__name__)

SHARED_DIR = "shared"
RUNS_DIR = "runs"
SETTINGS_FILE = "settings.json"


def settings_fingerprint(settings: ExperimentSettings, workers: int) -> dict:
    """What makes two runs comparable: everything but the seeds and models, the pretraining's threads, the versions."""
    fingerprint = {name: value for name, value in asdict(settings).items() if name not in ("seeds", "models")}
    return {**fingerprint, "workers": workers, "versions": {"torch": torch.__version__, "transformers": __version__}}


def prepare_shared(output_dir: Path, settings: ExperimentSettings, workers: int) -> Path:
    """`OUTPUT_DIR/shared`, made once (all or nothing) and reused if made with the same settings."""
    shared = output_dir / SHARED_DIR
    wanted = json.loads(json.dumps(settings_fingerprint(settings, workers)))  # as the file gives it back
    settings_file = shared / SETTINGS_FILE
    if shared.exists():
        if not settings_file.is_file():
            raise FileExistsError(f"{shared} exists without {SETTINGS_FILE}: not a study folder; choose another")
        found = json.loads(settings_file.read_text())["fingerprint"]
        if found != wanted:
            different = {name: {"folder": found.get(name), "now": wanted.get(name)}
                         for name in sorted(set(found) | set(wanted)) if found.get(name) != wanted.get(name)}
            raise ValueError(f"{output_dir} holds runs made with other settings {different}: use another folder, or "
                             "the folder's settings")
        return shared
    with staged_output(shared) as staging:
        made = prepare_task_and_base_models(staging, settings, workers)
        (staging / SETTINGS_FILE).write_text(json.dumps({"fingerprint": wanted, **made}, indent=1) + "\n")
    return shared


def result_file(output_dir: Path, run: str, seed: int) -> Path:
    return output_dir / RUNS_DIR / run / f"seed{seed}.json"


def cached_result(output_dir: Path, run: str, seed: int) -> dict | None:
    """The run's cached result, None if it has not finished; refused if the run's flags have changed since."""
    path = result_file(output_dir, run, seed)
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    if result["flags"] != RUNS[run]:
        raise ValueError(f"{path} was trained with {result['flags']}, but the run {run!r} is now {RUNS[run]}: "
                         "delete it to train it again")
    return result


def train_run(run: str, seed: int, output_dir: Path, budget: RecipeBudget) -> dict:
    """Train and score one run with one seed (in a worker process); its result file is written last, atomically."""
    run_dir = output_dir / RUNS_DIR / run / f"seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)  # what an interrupted attempt left
    scored = train_and_score(RUNS[run], seed, output_dir / SHARED_DIR, run_dir, budget)
    result = {"run": run, "seed": seed, "flags": RUNS[run], "accuracy": scored["accuracy"],
              "seconds": scored["seconds"], "checkpoint": str(scored["checkpoint"].relative_to(output_dir))}
    write_atomically(result_file(output_dir, run, seed), json.dumps(result, indent=1) + "\n")
    return result


def write_atomically(path: Path, text: str) -> None:
    """`text` into `path` through a temporary file beside it and one rename: readers see the old file or the new."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as staged:
        staged.write(text)
    os.replace(staged.name, path)


def study_seeds(study: str, seeds: tuple[int, ...] | None) -> tuple[int, ...]:
    """`seeds` if given, else the study's default count from seed 0."""
    return seeds if seeds is not None else tuple(range(STUDIES[study].default_seeds))


def run_studies(output_dir: str | Path, studies: list[str], seeds: tuple[int, ...] | None = None,
                settings: ExperimentSettings = ExperimentSettings(), workers: int = 2) -> dict[str, dict[int, dict]]:
    """Train what `studies` need and is not cached yet, lowest seeds first (a study stopped early has its first seeds
    of every row); returns each study's results by run and seed (see `study_results`)."""
    unknown = sorted(set(studies) - set(STUDIES))
    if unknown:
        raise ValueError(f"unknown studies {unknown}: choose among {list(STUDIES)}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if seeds is not None and (not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds)):
        raise ValueError(f"seeds must be distinct non-negative integers, got {list(seeds)}")
    output_dir = Path(output_dir)
    prepare_shared(output_dir, settings, workers)
    run_order = list(RUNS)
    jobs = sorted({(run, seed) for study in studies for run in STUDIES[study].runs()
                   for seed in study_seeds(study, seeds)}, key=lambda job: (job[1], run_order.index(job[0])))
    todo = [(run, seed) for run, seed in jobs if cached_result(output_dir, run, seed) is None]
    logger.info("%d runs needed, %d cached, %d to train on %d workers", len(jobs), len(jobs) - len(todo), len(todo),
                workers)
    for run, _ in todo:
        (output_dir / RUNS_DIR / run).mkdir(parents=True, exist_ok=True)
    if todo:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(train_run, run, seed, output_dir, settings.budget) for run, seed in todo]
            for done, future in enumerate(as_completed(futures), 1):
                result = future.result()
                logger.info("[%d/%d] %s seed %d: %.1f%% fine-grained, %.1f%% overall (%.0f s)", done, len(todo),
                            result["run"], result["seed"], 100 * result["accuracy"]["fine"],
                            100 * result["accuracy"]["all"], result["seconds"])
    return {study: study_results(output_dir, study, study_seeds(study, seeds)) for study in studies}


def study_results(output_dir: str | Path, study: str, seeds: tuple[int, ...]) -> dict[str, dict[int, dict]]:
    """The cached accuracies of the study's rows: run -> seed -> accuracy by question group; a missing run raises."""
    results = {}
    for run in STUDIES[study].runs():
        results[run] = {}
        for seed in seeds:
            result = cached_result(Path(output_dir), run, seed)
            if result is None:
                raise FileNotFoundError(f"{result_file(Path(output_dir), run, seed)} is missing: run the study")
            results[run][seed] = result["accuracy"]
    return results


__all__ = ["SHARED_DIR", "run_studies", "settings_fingerprint", "study_results", "study_seeds", "train_run",
           "write_atomically"]
