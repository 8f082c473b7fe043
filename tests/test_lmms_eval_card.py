"""lmms-eval's results into the model card: `convert`/`upcycle --eval-results DIR` and `mmfuser-llava card`.

`tests/data/lmms-eval-results` is a results folder written by lmms-eval 0.7.3 itself
(`tests/test_integration_lmms_eval.py`'s run of the bundled tiny model on the toy task, batch size 8).
"""

import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from modeling_mmfuser_llava.cli import build_parser, main
from modeling_mmfuser_llava.commands.output_options import card_info
from modeling_mmfuser_llava.conversion import ConversionError, ModelCardInfo, build_model_card, load_eval_results

LMMS_EVAL_RESULTS = Path(__file__).parent / "data" / "lmms-eval-results"
TASK = "mmfuser_finegrained"


def written_results() -> dict:
    """The results file's own numbers, read here with json alone (the reference the card must match)."""
    (file,) = LMMS_EVAL_RESULTS.rglob("*_results.json")
    return json.loads(file.read_text())


@pytest.fixture
def model_folder(tiny_pristine, tmp_path) -> Path:
    """A folder with the card `convert` would write (no evaluation results)."""
    model, _ = tiny_pristine
    folder = tmp_path / "model"
    folder.mkdir()
    model.config.save_pretrained(folder)
    build_model_card(ModelCardInfo(repo_id="someone/model"), model.config, "Converted for a test.", "model").save(
        folder / "README.md"
    )
    return folder


def test_lmms_eval_results_become_eval_results_number_for_number():
    document = written_results()
    results = {result.metric_type: result for result in load_eval_results(LMMS_EVAL_RESULTS)}
    written = document["results"][TASK]
    assert set(results) == {"accuracy", "fine_accuracy", "coarse_accuracy"}  # no stderr, no alias
    for metric, result in results.items():
        assert result.metric_value == written[f"{metric},none"]
        assert result.dataset_type == TASK and result.dataset_split == "test"
        assert result.source_name == "lmms-eval"  # lmms-eval from PyPI records its version as "unknown@unknown"
    (results_file,) = LMMS_EVAL_RESULTS.rglob("*_results.json")
    assert load_eval_results(results_file) == list(results.values())  # one results file is enough


def test_the_version_a_git_checkout_of_lmms_eval_records_is_the_source(tmp_path):
    results = bad_results(tmp_path, lambda text: text.replace('"unknown@unknown"', '"main@1a2b3c4d"'))
    assert {result.source_name for result in load_eval_results(results)} == {"lmms-eval main@1a2b3c4d"}


def test_card_command_writes_model_index_and_table(model_folder, capsys):
    accuracy = written_results()["results"][TASK]["accuracy,none"]
    files = sorted(model_folder.iterdir())
    assert main(["card", str(model_folder), "--eval-results", str(LMMS_EVAL_RESULTS)]) == 0
    assert main(["card", str(model_folder), "--eval-results", str(LMMS_EVAL_RESULTS)]) == 0  # refreshing again
    card = ModelCard.load(model_folder / "README.md")
    results = [(result.dataset_type, result.metric_type, result.metric_value) for result in card.data.eval_results]
    assert sorted(results) == sorted([(TASK, metric, written_results()["results"][TASK][f"{metric},none"])
                                      for metric in ("accuracy", "fine_accuracy", "coarse_accuracy")])
    assert f"| {TASK} | accuracy | {accuracy} | lmms-eval |" in card.text
    assert "No evaluation results were supplied" not in card.text
    assert "Converted for a test." in card.text and "@article{cao2024mmfuser" in card.text
    assert card.text.count("## Evaluation") == 1
    assert sorted(model_folder.iterdir()) == files  # nothing left over
    assert "3 evaluation results written" in capsys.readouterr().out


def test_card_command_keeps_other_results(model_folder, tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{"task_type": "image-text-to-text", "dataset_type": "gqa", "dataset_name": "GQA",
                                  "metric_type": "exact_match", "metric_value": 61.9}]))
    assert main(["card", str(model_folder), "--eval-results", str(other)]) == 0
    assert main(["card", str(model_folder), "--eval-results", str(LMMS_EVAL_RESULTS)]) == 0
    card = ModelCard.load(model_folder / "README.md")
    assert [result.dataset_type for result in card.data.eval_results] == ["gqa", TASK, TASK, TASK]
    assert "| GQA | exact_match | 61.9 | supplied by the user |" in card.text


def test_a_folder_without_a_card_gets_one_from_its_config(model_folder):
    (model_folder / "README.md").unlink()
    assert main(["card", str(model_folder), "--eval-results", str(LMMS_EVAL_RESULTS)]) == 0
    card = ModelCard.load(model_folder / "README.md")
    assert card.data.model_name == "model" and len(card.data.eval_results) == 3


def test_convert_and_upcycle_accept_an_lmms_eval_folder():
    for command in (["convert", "--checkpoint", "ckpt"], ["upcycle", "--base", "base"]):
        args = build_parser().parse_args([*command, "--output", "out", "--eval-results", str(LMMS_EVAL_RESULTS)])
        assert card_info(args).eval_results == load_eval_results(LMMS_EVAL_RESULTS)


def bad_results(folder: Path, change) -> Path:
    """A copy of the real results folder with its results file changed by `change(text) -> text` (the name says
    what the tests mostly use it for)."""
    copy = folder / "results"
    shutil.copytree(LMMS_EVAL_RESULTS, copy)
    (file,) = copy.rglob("*_results.json")
    file.write_text(change(file.read_text()))
    return copy


@pytest.mark.parametrize(("change", "message"), [
    (lambda text: text[: len(text) // 2], "cannot read lmms-eval results"),
    (lambda text: json.dumps({"results": {}}), "not an lmms-eval results file"),
    (lambda text: text.replace('"mmfuser_llava"', '"llava_hf"'), "results of the model 'llava_hf'"),
    (lambda text: text.replace('"limit": null', '"limit": 5.0'), "--limit 5.0 subset"),
    (lambda text: json.dumps({**json.loads(text), "results": {TASK: {"alias": TASK}}}), "hold no numeric metric"),
])
def test_bad_lmms_eval_results_are_a_clear_error_and_leave_the_card_alone(model_folder, tmp_path, capsys, change,
                                                                          message):
    before = (model_folder / "README.md").read_text()
    assert main(["card", str(model_folder), "--eval-results", str(bad_results(tmp_path, change))]) == 2
    assert message in capsys.readouterr().err
    assert (model_folder / "README.md").read_text() == before


def test_missing_results_and_missing_model_folder(model_folder, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match="no lmms-eval results"):
        load_eval_results(tmp_path / "empty")
    with pytest.raises(ConversionError, match="no lmms-eval results"):
        load_eval_results(tmp_path / "absent_results.json")
    assert main(["card", str(tmp_path / "empty"), "--eval-results", str(LMMS_EVAL_RESULTS)]) == 2
    assert list((tmp_path / "empty").iterdir()) == []
