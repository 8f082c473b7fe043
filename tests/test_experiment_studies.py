"""`mmfuser-llava experiment --study`: the rows each study trains, the cached and resumable runs, the statistics over
seeds and the report; every study once with one seed on a tiny budget (the CI version of the documented runs)."""

import contextlib
import io
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image
from scipy import stats

from modeling_mmfuser_llava.cli import main
from modeling_mmfuser_llava.experiment.comparison import ExperimentSettings
from modeling_mmfuser_llava.experiment.recipe import RecipeBudget, fuser_flags
from modeling_mmfuser_llava.experiment.seed_statistics import mean_interval, paired_comparison
from modeling_mmfuser_llava.experiment.studies import DEFAULT_RUN, RUNS, STUDIES, toy_layers
from modeling_mmfuser_llava.experiment.study_report import REPORT_FILES, format_study_table, summarize_study
from modeling_mmfuser_llava.experiment.study_runs import (
    RUNS_DIR,
    result_file,
    run_studies,
    settings_fingerprint,
    study_results,
)
from modeling_mmfuser_llava.training import parse_arguments
from modeling_mmfuser_llava.training.arguments import parse_vision_select_layer

def test_paper_layers_map_to_the_toy_tower_in_proportion():
    assert toy_layers(3, 8, 13, 18) == "list1/3/4/6/-2"  # the default's layers, as the one-off experiment uses
    assert parse_vision_select_layer(RUNS["layers-shallow"]["--mm_vision_select_layer"]) == ((0, 1, 2, 2), -2)
    assert parse_vision_select_layer(RUNS["layers-deep"]["--mm_vision_select_layer"]) == ((6, 6, 7, 8), -2)
    assert parse_vision_select_layer(RUNS["layers-non-uniform"]["--mm_vision_select_layer"]) == ((2, 3, 4, 7), -2)


def test_every_study_compares_with_the_default_and_trains_known_runs():
    for name, study in STUDIES.items():
        assert DEFAULT_RUN in study.runs() and set(study.runs()) <= set(RUNS), name
    assert {name: study.default_seeds for name, study in STUDIES.items()} == {
        "main": 8, "layers": 5, "attention": 5, "modules": 5}
    # 4 runs x 8 seeds, then 7 more runs x 5 seeds: what `--study all` trains.
    assert len({run for study in STUDIES.values() for run in study.runs()}) == 11


@pytest.mark.parametrize("run", RUNS)
def test_each_run_is_the_default_flags_but_its_own(run):
    required = ["--output_dir", "out", "--model_name_or_path", "llm", "--data_path", "data.json"]
    model_args = parse_arguments([*required, *fuser_flags(RUNS[run])])[0]
    default = parse_arguments([*required, *fuser_flags({})])[0]
    changed = {name for name in vars(model_args) if getattr(model_args, name) != getattr(default, name)}
    assert len(changed) == len(RUNS[run])
    assert (model_args.fuser_self_attention is False) == (run == "cross-attention-only")


def test_interval_and_paired_tests_match_textbook_values():
    interval = mean_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    half_width = 2.776445105 * math.sqrt(2.5 / 5)  # t(0.975, 4) * standard error
    assert (interval.mean, interval.low, interval.high) == pytest.approx((3, 3 - half_width, 3 + half_width))
    row, default = [0.8, 0.7, 0.9, 0.6, 0.75], [0.6, 0.65, 0.7, 0.5, 0.7]
    compared = paired_comparison(row, default)
    assert compared.difference.mean == pytest.approx(0.12)
    assert compared.t_test_p == pytest.approx(stats.ttest_1samp([0.2, 0.05, 0.2, 0.1, 0.05], 0).pvalue)
    # All five differences positive: of the 32 sign patterns, only this one and its mirror are as extreme.
    assert compared.sign_flip_p == pytest.approx(2 / 32)
    assert mean_interval([0.5]).low is None
    assert paired_comparison([0.5, 0.6], [0.4, 0.5]).t_test_p is None  # the same difference every seed
    with pytest.raises(ValueError, match="same seeds"):
        paired_comparison([0.5, 0.6], [0.4])


def test_study_table_reports_intervals_and_the_paired_difference():
    accuracies = {
        "llava": {0: 0.4, 1: 0.5, 2: 0.45},
        "cross-attention-only": {0: 0.7, 1: 0.6, 2: 0.65},
        DEFAULT_RUN: {0: 0.8, 1: 0.7, 2: 0.9},
    }
    results = {run: {seed: dict.fromkeys(("all", "fine", "coarse"), value) for seed, value in by_seed.items()}
               for run, by_seed in accuracies.items()}
    summary = summarize_study("modules", results)
    assert summary["seeds"] == [0, 1, 2] and [row["run"] for row in summary["rows"]] == STUDIES["modules"].runs()
    llava = summary["rows"][0]
    assert llava["fine"]["mean"] == pytest.approx(0.45)
    assert llava["against_default"]["fine"]["difference"]["mean"] == pytest.approx(-0.35)
    table = format_study_table(summary)
    assert "(3 seeds)" in table and "| + self-attention (MMFuser) | 80.0 [55.2, 104.8] |" in table
    assert "| LLaVA-1.5 | 45.0 [32.6, 57.4] |" in table and "-35.0 [" in table


TINY_FLAGS = ["--seeds", "0", "--max-steps", "2", "--num-train", "64", "--num-test", "3", "--workers", "1"]
# What the command makes of TINY_FLAGS.
TINY = ExperimentSettings(num_train=64, num_test=3, budget=RecipeBudget(max_steps=2))


@pytest.fixture(scope="module")
def tiny_studies(tmp_path_factory):
    """Every study, seed 0, two steps per stage, through the command line: the folder and what it printed."""
    output = tmp_path_factory.mktemp("studies") / "out"
    capture = io.StringIO()
    with contextlib.redirect_stdout(capture):
        assert main(["experiment", str(output), "--study", "all", *TINY_FLAGS]) == 0
    return output, capture.getvalue()


def test_every_study_runs_on_a_tiny_budget_and_writes_its_report(tiny_studies):
    output, printed = tiny_studies
    trained = sorted(path.parent.name for path in output.glob(f"{RUNS_DIR}/*/seed0.json"))
    assert trained == sorted(RUNS)  # rows that several studies share are trained once
    summaries = json.loads((output / REPORT_FILES["summary"]).read_text())
    assert list(summaries) == list(STUDIES)
    for study, summary in summaries.items():
        assert [row["run"] for row in summary["rows"]] == STUDIES[study].runs() and summary["seeds"] == [0]
        assert f"| {summary['title']} (1 seed) |" in printed
    assert (output / REPORT_FILES["tables"]).read_text().strip() in printed
    with Image.open(output / REPORT_FILES["figure"]) as figure:
        assert figure.format == "PNG" and figure.width > figure.height


def test_a_deleted_run_is_trained_again_to_the_same_weights_and_nothing_else(tiny_studies, tmp_path):
    output, _ = tiny_studies
    run_dir = output / RUNS_DIR / "concat" / "seed0"
    before = json.loads(result_file(output, "concat", 0).read_text())
    weights = (run_dir / "stage2" / "model.safetensors").read_bytes()
    others = {path: path.stat().st_mtime_ns for path in output.glob(f"{RUNS_DIR}/*/seed0.json")
              if path.parent.name != "concat"}
    result_file(output, "concat", 0).unlink()  # as a run killed before it finished leaves it
    results = run_studies(output, ["main"], (0,), TINY, workers=1)
    after = json.loads(result_file(output, "concat", 0).read_text())
    assert {**after, "seconds": 0} == {**before, "seconds": 0}
    assert results["main"]["concat"][0] == before["accuracy"]
    assert (run_dir / "stage2" / "model.safetensors").read_bytes() == weights
    assert {path: path.stat().st_mtime_ns for path in others} == others  # cached runs not trained again


def test_studies_refuse_what_would_mix_incomparable_runs(tiny_studies, tmp_path, capsys):
    output, _ = tiny_studies
    with pytest.raises(ValueError, match="other settings .*num_test"):
        run_studies(output, ["main"], (0,), replace(TINY, num_test=4), workers=1)
    with pytest.raises(ValueError, match="other settings .*workers"):
        run_studies(output, ["main"], (0,), TINY, workers=2)
    edited = tmp_path / "edited"
    shutil.copytree(output, edited)
    path = result_file(edited, "llava", 0)
    path.write_text(json.dumps({**json.loads(path.read_text()), "flags": {"--fuser_fusion": "average"}}))
    with pytest.raises(ValueError, match="delete it to train it again"):
        run_studies(edited, ["main"], (0,), TINY, workers=1)
    with pytest.raises(ValueError, match="unknown studies"):
        run_studies(tmp_path / "new", ["tables"], (0,), TINY)
    with pytest.raises(ValueError, match="distinct non-negative"):
        run_studies(tmp_path / "new", ["main"], (0, 0), TINY)
    assert not (tmp_path / "new").exists()
    with pytest.raises(SystemExit, match="drop --overwrite"):
        main(["experiment", str(tmp_path / "new"), "--study", "main", "--overwrite"])
    with pytest.raises(SystemExit, match="drop --models"):
        main(["experiment", str(tmp_path / "new"), "--study", "main", "--models", "concat"])
    assert not (tmp_path / "new").exists()


DOCUMENTED = Path(__file__).parents[1] / "docs" / "results"


@pytest.mark.parametrize("folder", ["toy-studies", "toy-studies-marks-across-patches"])
def test_documented_tables_are_computed_from_the_committed_runs(folder):
    """The tables in docs/research-toolkit.md are the report of the committed result files, recomputed here, and
    every committed run was trained with the flags its run has now."""
    results_dir = DOCUMENTED / folder
    summaries = json.loads((results_dir / REPORT_FILES["summary"]).read_text())
    tables = [format_study_table(summarize_study(study, study_results(results_dir, study, tuple(summary["seeds"]))))
              for study, summary in summaries.items()]
    assert "\n\n".join(tables) + "\n" == (results_dir / REPORT_FILES["tables"]).read_text()
    page = (Path(__file__).parents[1] / "docs" / "research-toolkit.md").read_text()
    for table in tables:
        assert table in page


@pytest.mark.parametrize(("folder", "marks_across_patches"), [("toy-studies", False),
                                                               ("toy-studies-marks-across-patches", True)])
def test_committed_study_folders_have_today_s_settings(folder, marks_across_patches):
    """A committed folder can be resumed (more seeds, more studies) on the machine it was made on: its fingerprint is
    today's for its settings, every setting added since included (the versions are the machine's)."""
    found = json.loads((DOCUMENTED / folder / "shared" / "settings.json").read_text())["fingerprint"]
    wanted = json.loads(json.dumps(settings_fingerprint(ExperimentSettings(marks_across_patches=marks_across_patches),
                                                        workers=2)))
    assert {name: value for name, value in found.items() if name != "versions"} == {
        name: value for name, value in wanted.items() if name != "versions"}
