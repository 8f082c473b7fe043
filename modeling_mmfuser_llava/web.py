"""A Gradio chat page about a picture, for any MMFuser-LLaVA, and the same model as a Gradio API (`/chat`).

Upload or pick a picture, ask, and the answer streams in as it is generated; follow-up questions continue the
conversation about the same picture (the processor's chat template carries the earlier turns); a new picture starts a
new conversation. One queue serves everyone, one generation at a time, so the page bounds what one request may take:
pictures over `max_pixels` are refused from their header before they are decoded (a 20000x20000 PNG is a few hundred
KB), questions longer than the model's context leaves after the picture are refused before anything is generated, and
each generation stops after `max_seconds`. Every error reaches the user as a message, never as Gradio's generic one.
The page calls no outside service: no analytics, no share link, its fonts served by the page itself.

This module imports only gradio, torch, transformers, PIL and `demo` (loading and model inputs), so a Space folder can
carry it beside `demo.py` (`web_space.write_space`) and run without this package installed.
"""

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from threading import Thread

import gradio as gr
import torch
from PIL import Image, UnidentifiedImageError
from transformers import TextIteratorStreamer

from .demo import (
    DEFAULT_PROMPT,
    EXAMPLE_IMAGE,
    bundled_examples,
    conversation_inputs,
    load_for_inference,
    user_message,
    write_trained_tiny_hub_folder,
)
from .grounding import BoxFrame, draw_boxes, find_boxes

TITLE = "MMFuser-LLaVA"
# A generation that takes longer than this between two tokens has failed; the page says so instead of hanging.
TOKEN_TIMEOUT_SECONDS = 300
MAX_UPLOAD = "20mb"
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_SECONDS = 60.0
# Small pictures (the bundled ones are 32x32) fill their frame, without blurring.
CSS = "#picture img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }"


class WebDemoError(Exception):
    """A problem the user can fix (a model that does not load), reported as a message rather than a traceback."""


@dataclass
class ChatModel:
    """A loaded model with its processor, the name it was loaded from and the examples its page offers."""

    model: torch.nn.Module
    processor: object
    name: str
    examples: list[list[str]] = field(default_factory=list)  # [picture path, question] pairs
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger pictures are refused
    max_seconds: float = DEFAULT_MAX_SECONDS  # each generation stops after this long

    def stream(
        self, picture: Image.Image, turns: list[list[str]], question: str, **settings
    ) -> Iterator[str]:
        """The answer to `question` about `picture` after the earlier `turns` ([question, answer] pairs), growing
        word by word as tokens are generated; `settings`: `generation_settings(...)`, or more `generate` arguments."""
        inputs = conversation_inputs(self.model, self.processor, [picture], [conversation(turns, question)])
        settings = {**settings, "max_time": self.max_seconds,
                    "max_new_tokens": min(settings.get("max_new_tokens", 64), self.tokens_left(inputs["input_ids"]))}
        streamer = TextIteratorStreamer(
            self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=TOKEN_TIMEOUT_SECONDS
        )
        failures = []

        def generate() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(**inputs, streamer=streamer, **settings)
            except Exception as error:  # reported by the caller's thread below
                failures.append(error)
                streamer.end()

        worker = Thread(target=generate, daemon=True)
        worker.start()
        text = ""
        for piece in streamer:
            text += piece
            yield text.strip()
        worker.join()
        if failures:
            raise gr.Error(f"generation failed: {failures[0]}")

    def tokens_left(self, input_ids: torch.Tensor) -> int:
        """How many tokens the model can still generate after `input_ids` (the picture's tokens included); a
        `gr.Error` when none: the prompt alone fills the context."""
        context = self.model.config.text_config.max_position_embeddings
        used = input_ids.shape[-1]
        if used >= context:
            raise gr.Error(f"The question is too long: with the picture and the conversation it takes {used} tokens "
                           f"and this model reads at most {context}. Ask a shorter question or clear the conversation.")
        return context - used

    def answer(self, picture: Image.Image, question: str, **settings) -> str:
        """The complete answer to a first question about `picture`."""
        text = ""
        for text in self.stream(picture, [], question, **settings):
            pass
        return text


def conversation(turns: list[list[str]], question: str) -> list[dict]:
    """The chat messages of `question` after the earlier `turns` ([question, answer] pairs), in transformers' format;
    the picture goes with the first question only, as in LLaVA's conversations."""
    messages = []
    for index, (asked, answered) in enumerate(turns):
        messages += [user_message(asked, with_image=index == 0),
                     {"role": "assistant", "content": [{"type": "text", "text": answered}]}]
    return [*messages, user_message(question, with_image=not turns)]


def generation_settings(max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0) -> dict:
    """Arguments of `generate`: greedy at temperature 0, else sampling with `temperature` and nucleus `top_p`."""
    settings = {"max_new_tokens": int(max_new_tokens)}
    if temperature > 0:
        return {**settings, "do_sample": True, "temperature": float(temperature), "top_p": float(top_p)}
    return {**settings, "do_sample": False}


def open_picture(upload: dict | str | Path | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The RGB picture of an upload (Gradio's file payload or a path); a clear `gr.Error` when it is not a picture or
    has more than `max_pixels` pixels (read from its header: the picture is not decoded)."""
    if upload is None:
        raise gr.Error("Upload a picture first (or pick one of the examples).")
    path, name = (upload["path"], upload.get("orig_name")) if isinstance(upload, dict) else (upload, None)
    name = name or Path(path).name
    too_large = f"{name} is too large: this page takes pictures of up to {max_pixels / 1e6:g} megapixels"
    try:
        with Image.open(path) as opened:
            width, height = opened.size
            if width * height > max_pixels:
                raise gr.Error(f"{too_large}, and it is {width}x{height} ({width * height / 1e6:g} megapixels).")
            return opened.convert("RGB")
    except Image.DecompressionBombError as error:  # PIL's own bound, checked as it opens: far over ours
        raise gr.Error(f"{too_large} ({error})")
    except (UnidentifiedImageError, OSError):
        raise gr.Error(f"{name} is not a picture this page can read: upload a PNG, JPEG, WebP, GIF or BMP file.")


@contextlib.contextmanager
def errors_as_messages() -> Iterator[None]:
    """Any failure while answering reaches the user as a message (Gradio shows only a generic text for others)."""
    try:
        yield
    except gr.Error:
        raise
    except Exception as error:
        raise gr.Error(f"The page could not answer: {type(error).__name__}: {error}") from error


def chat_messages(turns: list[list[str]]) -> list[dict]:
    """The chatbot's view of the conversation."""
    return [message for asked, answered in turns for message in (
        {"role": "user", "content": asked}, {"role": "assistant", "content": answered})]


def respond(
    chat_model: ChatModel,
    upload: dict | str | None,
    question: str,
    turns: list[list[str]],
    max_new_tokens: int,
    temperature: float,
    top_p: float,
) -> Iterator[tuple[list[dict], list[list[str]], str]]:
    """One turn of the page: yields (chat, turns, question box) as the answer grows; the box empties at the start."""
    question = question.strip()
    if not question:
        raise gr.Error("Type a question about the picture.")
    picture = open_picture(upload, chat_model.max_pixels)
    settings = generation_settings(max_new_tokens, temperature, top_p)
    partial = ""
    yield chat_messages([*turns, [question, partial]]), turns, ""
    for partial in chat_model.stream(picture, turns, question, **settings):
        yield chat_messages([*turns, [question, partial]]), turns, ""
    turns = [*turns, [question, partial]]
    yield chat_messages(turns), turns, ""


def answer_boxes(chat_model: ChatModel, upload: dict | str | None, turns: list[list[str]]) -> Image.Image | None:
    """The picture with the boxes of the latest answer drawn in its own frame; None when that answer holds none."""
    if not turns or not find_boxes(turns[-1][1]):
        return None
    return draw_boxes(open_picture(upload), turns[-1][1], BoxFrame.of(chat_model.processor))


def chat_api(chat_model: ChatModel, upload: dict | str | None, question: str) -> str:
    """The `/chat` endpoint: the complete, greedy answer to one question about one picture."""
    if not question or not question.strip():
        raise gr.Error("The question is empty.")
    return chat_model.answer(open_picture(upload, chat_model.max_pixels), question.strip(), **generation_settings())


def build_app(chat_model: ChatModel) -> gr.Blocks:
    """The page: picture, chat, question box, settings, examples; and the `/chat` API on the same model."""
    with gr.Blocks(title=f"{TITLE}: {chat_model.name}", analytics_enabled=False) as app:
        gr.Markdown(f"# {TITLE}\nAsk about a picture. Model: `{chat_model.name}`. Greedy unless you raise the "
                    "temperature; a new picture starts a new conversation.")
        turns = gr.State([])
        # Rendered in the right column; created first so that the examples on the left can fill it.
        question = gr.Textbox(label="Question", placeholder="Ask about the picture and press Enter",
                              elem_id="question", render=False)
        with gr.Row():
            with gr.Column(scale=2):
                picture = gr.Image(type="filepath", label="Picture", sources=["upload", "clipboard"], height=400,
                                   elem_id="picture")
                boxes = gr.Image(type="pil", label="Boxes in the answer", interactive=False, elem_id="boxes")
                if chat_model.examples:
                    gr.Examples(chat_model.examples, inputs=[picture, question],
                                label="Examples: a picture and a question", examples_per_page=4, elem_id="examples")
            with gr.Column(scale=3):
                chat = gr.Chatbot(label="Conversation", height=400, elem_id="chat")
                question.render()
                with gr.Row():
                    ask = gr.Button("Ask", variant="primary", elem_id="ask")
                    clear = gr.Button("Clear", elem_id="clear")
                with gr.Accordion("Generation settings", open=False):
                    max_new_tokens = gr.Slider(1, 512, value=64, step=1, label="Max new tokens")
                    temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="Temperature (0: greedy)")
                    top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p (when sampling)")
        answer = gr.Textbox(visible=False)

        def respond_here(upload, asked, earlier, *settings):
            with errors_as_messages():
                yield from respond(chat_model, upload, asked, earlier, *settings)

        def chat_here(image, question):
            with errors_as_messages():
                return chat_api(chat_model, image, question)

        def start_over():
            return [], [], ""

        def new_picture():
            return [], []

        inputs = [picture, question, turns, max_new_tokens, temperature, top_p]
        # preprocess=False: the upload reaches open_picture as a file, so a file that is not a picture gets a clear
        # message instead of Gradio's decoding error.
        for trigger in (ask.click, question.submit):
            trigger(respond_here, inputs, [chat, turns, question], preprocess=False, api_visibility="private").then(
                lambda upload, done: answer_boxes(chat_model, upload, done), [picture, turns], boxes,
                preprocess=False, api_visibility="private")
        clear.click(start_over, None, [chat, turns, question], api_visibility="private")
        picture.change(new_picture, None, [chat, turns], api_visibility="private")
        gr.Button(visible=False).click(chat_here, [picture, question], answer, preprocess=False, api_name="chat")
    return app


def load_chat_model(
    model: str | Path | None, device: str = "cpu", load_in_4bit: bool = False, scratch: str | Path | None = None
) -> ChatModel:
    """`model` loaded as `mmfuser-llava demo` loads it (trust_remote_code); None: the bundled trained tiny model,
    written as a Hub folder under `scratch`, with its example pictures and questions."""
    if model is None:
        if scratch is None:
            raise ValueError("the bundled model needs a scratch folder to be written to")
        folder = write_trained_tiny_hub_folder(Path(scratch) / "mmfuser-llava-tiny-trained")
        examples = [[str(example["image"]), q["question"]] for example in bundled_examples()
                    for q in example["questions"]]
        return ChatModel(*load_checked(folder, device, load_in_4bit), "bundled tiny trained model", examples)
    examples = [[str(EXAMPLE_IMAGE), DEFAULT_PROMPT]] if EXAMPLE_IMAGE.is_file() else []
    return ChatModel(*load_checked(model, device, load_in_4bit), str(model), examples)


def load_checked(model: str | Path, device: str, load_in_4bit: bool):
    try:
        return load_for_inference(model, device=device, load_in_4bit=load_in_4bit)
    except (OSError, ValueError, ImportError, RuntimeError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise WebDemoError(f"cannot load the model {str(model)!r}: {first_line}") from error


def serve(
    model: str | Path | None = None,
    host: str | None = "127.0.0.1",
    port: int | None = 7860,
    device: str = "cpu",
    load_in_4bit: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_seconds: float = DEFAULT_MAX_SECONDS,
) -> None:
    """Load the model, then serve the page until interrupted (host/port None: Gradio's defaults and environment, as
    on a Space); `max_pixels` and `max_seconds` bound each request (see the module's docstring)."""
    with tempfile.TemporaryDirectory(prefix="mmfuser-llava-web-") as scratch:
        chat_model = load_chat_model(model, device, load_in_4bit, scratch)
        chat_model.max_pixels, chat_model.max_seconds = max_pixels, max_seconds
        app = build_app(chat_model)
        app.queue(default_concurrency_limit=1, max_size=64).launch(
            server_name=host, server_port=port, share=False, max_file_size=MAX_UPLOAD, css=CSS
        )


__all__ = [
    "ChatModel",
    "WebDemoError",
    "build_app",
    "chat_api",
    "conversation",
    "errors_as_messages",
    "generation_settings",
    "load_chat_model",
    "open_picture",
    "respond",
    "serve",
]
