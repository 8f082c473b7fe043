"""`mmfuser-llava web`: the page's functions called directly (no server), the Space writer and the command line.

The right answers come from the bundled examples (the toy task's ground truth), not from the page's own code; the
served page and the API over HTTP, and the page in a browser, are in tests/test_integration_web.py.
"""

import ast

import gradio as gr
import numpy as np
import pytest
import torch
from huggingface_hub import SpaceCard
from PIL import Image

from modeling_mmfuser_llava.cli import main
from modeling_mmfuser_llava.conversion import ModelCardInfo, build_model_card
from modeling_mmfuser_llava.demo import answer, bundled_examples, conversation_inputs, user_message
from modeling_mmfuser_llava.grounding import format_box, to_padded_square_box
from modeling_mmfuser_llava.web import (
    ChatModel,
    build_app,
    answer_boxes,
    chat_api,
    conversation,
    generation_settings,
    load_chat_model,
    open_picture,
    respond,
)
from modeling_mmfuser_llava.web_space import carried_modules, space_requirements, write_space

GREEDY = generation_settings()


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> ChatModel:
    """The page's default model: the bundled trained tiny model, loaded through trust_remote_code."""
    return load_chat_model(None, scratch=tmp_path_factory.mktemp("web"))


@pytest.fixture(scope="module")
def example() -> dict:
    return bundled_examples()[0]


def test_default_model_offers_every_bundled_picture_and_question(chat_model):
    expected = [[str(item["image"]), q["question"]] for item in bundled_examples() for q in item["questions"]]
    assert chat_model.examples == expected and len(expected) == 16
    assert chat_model.model.config.model_type == "mmfuser_llava"


def test_api_answers_the_bundled_questions_right(chat_model):
    for item in bundled_examples()[:2]:
        for question in item["questions"][:2]:
            assert chat_api(chat_model, {"path": str(item["image"])}, question["question"]) == question["answer"]


def test_streamed_answer_grows_and_equals_the_plain_greedy_answer(chat_model, example):
    question = example["questions"][2]
    updates = list(respond(chat_model, str(example["image"]), f"  {question['question']} ", [], 64, 0.0, 1.0))
    first_chat, first_turns, first_box = updates[0]
    assert first_chat == [{"role": "user", "content": question["question"]}, {"role": "assistant", "content": ""}]
    assert first_turns == [] and first_box == ""  # the question box empties as soon as the question is sent
    partial_answers = [chat[-1]["content"] for chat, _, _ in updates]
    assert all(later.startswith(earlier) for earlier, later in zip(partial_answers, partial_answers[1:]))
    final_chat, final_turns, _ = updates[-1]
    # Reference: the non-streaming greedy path of `mmfuser-llava demo` (generate without a streamer).
    plain = answer(chat_model.model, chat_model.processor, open_picture(str(example["image"])), question["question"])
    assert final_turns == [[question["question"], plain]] and plain == question["answer"]
    assert final_chat[-1] == {"role": "assistant", "content": question["answer"]}


def test_stream_yields_word_by_word_what_generate_returns_at_once(chat_model, example):
    """Ten tokens forced (min_new_tokens): the stream grows in several steps to the text `generate` returns."""
    picture, question = open_picture(str(example["image"])), example["questions"][0]["question"]
    settings = {**generation_settings(10), "min_new_tokens": 10}
    partials = list(chat_model.stream(picture, [], question, **settings))
    inputs = conversation_inputs(chat_model.model, chat_model.processor, [picture], [[user_message(question)]])
    with torch.inference_mode():
        output = chat_model.model.generate(**inputs, **settings)
    whole = chat_model.processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert partials[-1] == whole and len(whole.split()) >= 5
    assert len(set(partials)) >= 5 and all(later.startswith(earlier) for earlier, later in zip(partials, partials[1:]))


def test_follow_up_questions_continue_the_conversation(chat_model, example):
    turns = []
    for question in example["questions"][:2]:
        *_, (chat, turns, _) = respond(chat_model, str(example["image"]), question["question"], turns, 16, 0.0, 1.0)
    assert turns == [[q["question"], q["answer"]] for q in example["questions"][:2]]
    assert [message["role"] for message in chat] == ["user", "assistant"] * 2


def test_conversation_is_vicuna_v1_with_the_picture_in_the_first_turn_only(chat_model):
    messages = conversation([["what colour", "cyan"]], "what shape")
    prompt = chat_model.processor.apply_chat_template(messages, add_generation_prompt=True)
    system = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
              "detailed, and polite answers to the user's questions.")
    # LLaVA-1.5's vicuna_v1 separators: " " after a user turn, "</s>" after an assistant turn.
    assert prompt == f"{system} USER: <image>\nwhat colour ASSISTANT: cyan</s>USER: what shape ASSISTANT:"


def test_generation_settings_are_greedy_unless_a_temperature_is_set():
    assert GREEDY == {"max_new_tokens": 64, "do_sample": False}
    assert generation_settings(8, 0.7, 0.9) == {"max_new_tokens": 8, "do_sample": True, "temperature": 0.7,
                                                "top_p": 0.9}


def test_sampling_settings_reach_generate(chat_model, example):
    text = chat_model.answer(open_picture(str(example["image"])), "what colour", **generation_settings(3, 1.5, 0.9))
    assert isinstance(text, str) and len(chat_model.processor.tokenizer(text)["input_ids"]) <= 3 + 1


def test_a_file_that_is_not_a_picture_gets_a_clear_message(chat_model, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    with pytest.raises(gr.Error, match=r"report\.txt is not a picture this page can read: upload a PNG"):
        chat_api(chat_model, {"path": str(notes), "orig_name": "report.txt"}, "what colour")
    with pytest.raises(gr.Error, match="notes.txt is not a picture"):
        list(respond(chat_model, str(notes), "what colour", [], 8, 0.0, 1.0))
    with pytest.raises(gr.Error, match="Upload a picture first"):
        chat_api(chat_model, None, "what colour")
    with pytest.raises(gr.Error, match="Type a question"):
        list(respond(chat_model, str(notes), "   ", [], 8, 0.0, 1.0))


def test_the_page_exposes_chat_as_its_only_api(chat_model):
    app = build_app(chat_model)
    endpoints = app.get_api_info()["named_endpoints"]
    assert list(endpoints) == ["/chat"]
    parameters = endpoints["/chat"]["parameters"]
    assert [parameter["component"] for parameter in parameters] == ["Image", "Textbox"]
    assert [ret["component"] for ret in endpoints["/chat"]["returns"]] == ["Textbox"]
    assert app.analytics_enabled is False


def test_a_model_that_does_not_load_is_an_error_message_not_a_traceback(tmp_path, capsys):
    (tmp_path / "no-model").mkdir()  # a local folder, so that nothing asks the Hub
    (tmp_path / "no-model" / "config.json").write_text("{not json")
    assert main(["web", "--model", str(tmp_path / "no-model")]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"mmfuser-llava web: error: cannot load the model '{tmp_path / 'no-model'}'")
    assert "Traceback" not in error and len(error.splitlines()) == 1


def test_write_space_needs_a_model(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["web", "--write-space", str(tmp_path / "space")])
    assert exit_info.value.code == 2 and not (tmp_path / "space").exists()


def test_space_folder_runs_the_page_for_the_model(tmp_path, capsys):
    space = tmp_path / "space"
    assert main(["web", "--write-space", str(space), "--model", "someone/mmfuser-llava-7b",
                 "--space-id", "someone/chat"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {space}"
    assert sorted(path.relative_to(space).as_posix() for path in space.rglob("*") if path.is_file()) == [
        "README.md", "app.py", "mmfuser_llava_web/__init__.py", "mmfuser_llava_web/assets/example.png",
        "mmfuser_llava_web/demo.py", "mmfuser_llava_web/grounding.py", "mmfuser_llava_web/web.py", "requirements.txt",
    ]
    for module in (space / "mmfuser_llava_web").glob("*.py"):  # what the page imports on loading, it carries
        for node in ast.parse(module.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.level:
                assert (space / "mmfuser_llava_web" / f"{node.module}.py").is_file(), (module.name, node.module)
    card = SpaceCard.load(space / "README.md")
    assert (card.data.sdk, card.data.sdk_version, card.data.app_file) == ("gradio", gr.__version__, "app.py")
    assert card.data.models == ["someone/mmfuser-llava-7b"] and 'Client("someone/chat")' in card.text
    app = ast.parse((space / "app.py").read_text())
    assigned = {node.targets[0].id: node.value.value for node in app.body if isinstance(node, ast.Assign)}
    assert assigned == {"MODEL": "someone/mmfuser-llava-7b"}
    imported = {node.module for node in ast.walk(app) if isinstance(node, ast.ImportFrom)}
    assert imported == {"mmfuser_llava_web.web"}
    requirements = (space / "requirements.txt").read_text().splitlines()
    assert any(line.startswith("gradio") for line in requirements)
    assert any(line.startswith("transformers") for line in requirements)
    assert not any(line.startswith(("bitsandbytes", "pytest", "peft")) for line in requirements)
    assert [line for line in space_requirements(load_in_4bit=True) if line not in requirements][0].startswith(
        "bitsandbytes")
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".space.partial")]


def test_carried_modules_follow_module_level_relative_imports(tmp_path):
    (tmp_path / "web.py").write_text("import os\nfrom .demo import load\n")
    (tmp_path / "demo.py").write_text("from .boxes import draw\ndef build():\n    from .tiny import make\n")
    (tmp_path / "boxes.py").write_text("from .demo import load\n")
    assert carried_modules(tmp_path) == ["boxes.py", "demo.py", "web.py"]  # not tiny.py, imported in a function
    (tmp_path / "boxes.py").write_text("from . import demo\n")
    with pytest.raises(ValueError, match="boxes.py: a carried module imports its siblings as"):
        carried_modules(tmp_path)


def test_space_writer_refuses_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "space").mkdir()
    (tmp_path / "space" / "keep.txt").write_text("mine")
    assert main(["web", "--write-space", str(tmp_path / "space"), "--model", "someone/model"]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert [path.name for path in (tmp_path / "space").iterdir()] == ["keep.txt"]
    assert write_space(tmp_path / "space", "someone/model", overwrite=True) == tmp_path / "space"
    assert (tmp_path / "space" / "app.py").is_file() and not (tmp_path / "space" / "keep.txt").exists()


def test_model_card_links_the_space_when_given(tiny_pristine):
    model, _ = tiny_pristine
    linked = build_model_card(ModelCardInfo(space_id="someone/mmfuser-chat"), model.config, "For a test.", "tiny")
    assert "(https://huggingface.co/spaces/someone/mmfuser-chat)" in linked.text
    plain = build_model_card(ModelCardInfo(), model.config, "For a test.", "tiny")
    assert "spaces/" not in plain.text and "For a test.\n\n- Vision layers" in plain.text



def test_the_page_draws_the_latest_answer_s_boxes_in_the_picture_s_frame(chat_model, tmp_path):
    picture = tmp_path / "wide.png"
    Image.new("RGB", (100, 50), "white").save(picture)
    model_box = to_padded_square_box((0.2, 0.2, 0.8, 0.8), 100, 50)  # (0.2, 0.35, 0.8, 0.65): two decimals exact

    drawn = np.asarray(answer_boxes(chat_model, str(picture), [["where", "red"], ["and now", format_box(model_box)]]))

    red_rows, red_columns = np.nonzero((drawn[..., 0] == 255) & (drawn[..., 1] == 0))
    assert (red_columns.min(), red_rows.min(), red_columns.max(), red_rows.max()) == (20, 10, 80, 40)
    assert answer_boxes(chat_model, str(picture), [["and now", format_box(model_box)], ["where", "red"]]) is None
    assert answer_boxes(chat_model, str(picture), []) is None


def bomb_png(path, width: int, height: int):
    """A 1-bit black PNG of `width` x `height`: a few hundred KB on disk, width * height bytes once decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path


def test_pictures_over_the_pixel_bound_are_refused_before_decoding(chat_model, tmp_path):
    """The issue's 20000x20000 PNG (over PIL's own bound too) and one between the page's bound and PIL's."""
    bomb = bomb_png(tmp_path / "bomb.png", 20000, 20000)
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(gr.Error, match=r"bomb\.png is too large: this page takes pictures of up to 40 megapixels"):
        chat_api(chat_model, str(bomb), "what colour")
    large = bomb_png(tmp_path / "large.png", 8000, 6000)
    with pytest.raises(gr.Error, match=r"large\.png is too large: .* it is 8000x6000 \(48 megapixels\)"):
        list(respond(chat_model, str(large), "what colour", [], 8, 0.0, 1.0))
    assert open_picture(str(large), max_pixels=48_000_000).size == (8000, 6000)  # the bound is the page's option


def test_a_question_longer_than_the_context_is_refused_before_generating(chat_model, example, monkeypatch):
    def no_generation(**kwargs):
        raise AssertionError("generate ran")

    monkeypatch.setattr(chat_model.model, "generate", no_generation)
    context = chat_model.model.config.text_config.max_position_embeddings
    with pytest.raises(gr.Error, match=rf"The question is too long: .* takes \d+ tokens and this model reads at most "
                       rf"{context}"):
        chat_api(chat_model, str(example["image"]), "what colour " * 20000)


def test_each_generation_is_bounded_in_time_and_by_the_context(chat_model, example, monkeypatch):
    seen = {}
    generate = chat_model.model.generate

    def spy(**kwargs):
        seen.update(kwargs)
        return generate(**kwargs)

    monkeypatch.setattr(chat_model.model, "generate", spy)
    monkeypatch.setattr(chat_model, "max_seconds", 7.5)
    chat_model.answer(open_picture(str(example["image"])), "what colour", **generation_settings(max_new_tokens=10**6))
    context = chat_model.model.config.text_config.max_position_embeddings
    assert seen["max_time"] == 7.5 and seen["max_new_tokens"] == context - seen["input_ids"].shape[-1]


def test_unexpected_errors_reach_the_page_as_messages(chat_model, example, monkeypatch):
    from modeling_mmfuser_llava.web import errors_as_messages

    with pytest.raises(gr.Error, match="The page could not answer: KeyError: 'pixel_values'"):
        with errors_as_messages():
            raise KeyError("pixel_values")
    with pytest.raises(gr.Error, match="Upload a picture first"):  # the page's own messages pass unchanged
        with errors_as_messages():
            chat_api(chat_model, None, "what colour")
