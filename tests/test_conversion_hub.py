"""Model card, push dry run and the convert command line (no network: the dry run must not touch it)."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import huggingface_hub
import pytest
from huggingface_hub import HfApi, ModelCard
from original_layout import original, write_original_checkpoint  # noqa: F401 (fixture)

from modeling_mmfuser_llava.cli import main
from modeling_mmfuser_llava.conversion import ConversionError, ModelCardInfo, build_model_card, load_eval_results
from modeling_mmfuser_llava.conversion.push import PushError, push_folder

EVAL_RESULTS = [
    {"task_type": "visual-question-answering", "dataset_type": "textvqa", "dataset_name": "TextVQA",
     "metric_type": "accuracy", "metric_value": 12.5},
    {"task_type": "visual-question-answering", "dataset_type": "gqa", "dataset_name": "GQA",
     "metric_type": "accuracy", "metric_value": 34.25},
]


@pytest.fixture
def no_network(monkeypatch):
    """Any Hub call fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the network was used")
    for method in ("create_repo", "upload_folder", "upload_file", "create_commit"):
        monkeypatch.setattr(HfApi, method, refuse)


def test_model_card_metadata_usage_and_citation(tiny_pristine):
    model, _ = tiny_pristine
    info = ModelCardInfo(repo_id="someone/mmfuser-llava-7b", base_models=["lmsys/vicuna-7b-v1.5"])
    card = build_model_card(info, model.config, "Converted for a test.", "unused")
    data = card.data.to_dict()
    assert data["license"] == "llama2"
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "image-text-to-text"
    assert data["base_model"] == ["lmsys/vicuna-7b-v1.5"]
    assert data["datasets"] == ["liuhaotian/LLaVA-Pretrain", "liuhaotian/LLaVA-Instruct-150K"]
    assert "arxiv:2410.11829" in data["tags"]
    assert "model-index" not in data and "model-index" not in str(card)
    for text in ('repo = "someone/mmfuser-llava-7b"', "trust_remote_code=True", "load_in_4bit=True",
                 "https://arxiv.org/abs/2410.11829", "@article{cao2024mmfuser", "Converted for a test.",
                 "No evaluation results were supplied"):
        assert text in card.text


def test_evaluation_results_only_from_the_users_file(tiny_pristine, tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(EVAL_RESULTS))
    model, _ = tiny_pristine
    card = build_model_card(
        ModelCardInfo(repo_id="someone/model", eval_results=load_eval_results(path)), model.config, "", "unused"
    )
    reloaded = ModelCard(str(card))
    assert [(result.dataset_name, result.metric_value) for result in reloaded.data.eval_results] == [
        ("TextVQA", 12.5), ("GQA", 34.25)
    ]
    assert "| TextVQA | accuracy | 12.5 |" in card.text and "No evaluation results" not in card.text


def test_unreadable_evaluation_results_are_an_error(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps([{"dataset_name": "TextVQA", "metric_value": 1.0}]))
    with pytest.raises(ConversionError, match="results.json"):
        load_eval_results(path)


def test_dry_run_lists_files_and_sizes_without_network(tmp_path, no_network):
    (tmp_path / "model.safetensors").write_bytes(b"x" * 1234)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref")
    files = push_folder(tmp_path, "someone/model", dry_run=True)
    assert [(file.path, file.size) for file in files] == [("config.json", 2), ("model.safetensors", 1234)]
    with pytest.raises(ConversionError, match="not a valid Hub repo id"):
        push_folder(tmp_path, "not a repo id", dry_run=True)


def test_push_creates_the_repo_and_uploads_the_folder(tmp_path, monkeypatch):
    """The real push path, with huggingface_hub's two calls recorded in place of the network."""
    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, *args, **kwargs: calls.append(("create_repo", args, kwargs)))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kwargs: calls.append(("upload_folder", (), kwargs)))
    (tmp_path / "model.safetensors").write_bytes(b"x" * 10)
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "upload.lock").write_text("")
    files = push_folder(tmp_path, "someone/model", private=True, token="hf_test")
    assert [file.path for file in files] == ["model.safetensors"]
    assert [name for name, _, _ in calls] == ["create_repo", "upload_folder"]  # the repo exists before the upload
    _, args, create = calls[0]
    assert args == ("someone/model",) and create["private"] is True and create["exist_ok"] is True
    upload = calls[1][2]
    assert upload["repo_id"] == "someone/model" and upload["folder_path"] == tmp_path
    assert upload["repo_type"] == create["repo_type"] == "model"


class StopBeforeTheNetwork(Exception):
    pass


def test_dry_run_lists_exactly_what_the_upload_sends(tmp_path, monkeypatch):
    """`.git` and `.cache` skipped at any depth, by both: the dry run's list against the files huggingface_hub's
    `upload_folder` picks with the ignore patterns it is given (recorded where it builds the commit)."""
    for name in ("model.safetensors", "sub/weights.bin", ".gitattributes", "cache/kept.txt", "sub/.github/kept",
                 ".git/HEAD", "sub/.git/HEAD", ".cache/huggingface/upload/x.lock", ".cache/other", "sub/.cache/y",
                 "a/b/.cache/z"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    sent = []
    prepare_additions = HfApi._prepare_upload_folder_additions

    def record_additions(self, *args, **kwargs):
        sent.extend(operation.path_in_repo for operation in prepare_additions(self, *args, **kwargs))
        raise StopBeforeTheNetwork

    monkeypatch.setattr(HfApi, "create_repo", lambda self, *args, **kwargs: None)
    monkeypatch.setattr(HfApi, "_prepare_upload_folder_additions", record_additions)
    with pytest.raises(StopBeforeTheNetwork):
        push_folder(tmp_path, "someone/model", token="hf_test")
    planned = [file.path for file in push_folder(tmp_path, "someone/model", dry_run=True)]
    assert planned == sorted(sent) == [".gitattributes", "cache/kept.txt", "model.safetensors", "sub/.github/kept",
                                       "sub/weights.bin"]


@pytest.fixture
def hub_endpoint(monkeypatch):
    """Point huggingface_hub at a URL (HF_ENDPOINT, also read at import: set in its constants too), online."""
    def point_at(url: str) -> None:
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", url)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_TOKEN", "hf_test")
    return point_at


def test_a_refused_connection_is_a_message_and_exit_code_2(original, tmp_path, capsys, hub_endpoint):
    source = write_original_checkpoint(tmp_path / "original", original, weight_format="safetensors")
    output_dir = tmp_path / "converted"
    with socket.socket() as closed_port:  # bound, never listening: connections to it are refused at once
        closed_port.bind(("127.0.0.1", 0))
        hub_endpoint(f"http://127.0.0.1:{closed_port.getsockname()[1]}")
        exit_code = main(["convert", "--checkpoint", str(source), "--output", str(output_dir), "--no-progress",
                          "--push-to-hub", "someone/mmfuser-tiny"])
    assert exit_code == 2
    error = capsys.readouterr().err
    assert "mmfuser-llava convert: error: creating the Hub repo someone/mmfuser-tiny failed (ConnectError" in error
    assert f"The local folder is complete at {output_dir}: upload it later with `hf upload" in error
    assert "Traceback" not in error
    assert {"config.json", "model.safetensors", "README.md"} <= {path.name for path in output_dir.iterdir()}


class RefuseTheToken(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.dumps({"error": "Invalid credentials in Authorization header"}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_hub_error_names_what_failed_and_the_complete_folder(tmp_path, hub_endpoint):
    (tmp_path / "config.json").write_text("{}")
    server = ThreadingHTTPServer(("127.0.0.1", 0), RefuseTheToken)
    server.timeout = 10
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        hub_endpoint(f"http://127.0.0.1:{server.server_address[1]}")
        with pytest.raises(PushError) as raised:
            push_folder(tmp_path, "someone/model", private=True)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    message = str(raised.value)
    assert message.startswith("creating the Hub repo someone/model failed (") and "401" in message
    assert f"complete at {tmp_path}: upload it later with `hf upload someone/model {tmp_path} . --private`" in message


def test_convert_command_with_push_dry_run(original, tmp_path, capsys, no_network):
    source = write_original_checkpoint(tmp_path / "original", original, weight_format="safetensors")
    results = tmp_path / "results.json"
    results.write_text(json.dumps(EVAL_RESULTS[:1]))
    output_dir = tmp_path / "converted"
    exit_code = main([
        "convert", "--checkpoint", str(source), "--output", str(output_dir), "--no-progress",
        "--base-model", "lmsys/vicuna-7b-v1.5", "--eval-results", str(results),
        "--push-to-hub", "someone/mmfuser-tiny", "--dry-run",
    ])
    assert exit_code == 0
    printed = capsys.readouterr().out
    assert f"wrote {output_dir}" in printed and "tokens added: <image>" in printed
    assert "would upload to someone/mmfuser-tiny (public):" in printed
    for path in output_dir.iterdir():
        assert f"{path.stat().st_size:,d}  {path.name}" in printed
    card = ModelCard.load(output_dir / "README.md")
    assert card.data.base_model == ["lmsys/vicuna-7b-v1.5"] and card.data.eval_results[0].metric_value == 12.5
    assert 'repo = "someone/mmfuser-tiny"' in card.text


def test_convert_command_reports_errors(original, tmp_path, capsys):
    source = write_original_checkpoint(tmp_path / "original", original, config_overrides={"mm_use_im_start_end": True})
    assert main(["convert", "--checkpoint", str(source), "--output", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "mm_use_im_start_end is True" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["convert", "--checkpoint", str(source), "--output", str(tmp_path / "out"), "--dry-run"])
