"""`mmfuser-llava web` served on 127.0.0.1: its `/chat` API through gradio_client, and the page in a real browser.

The browser is Debian's chromium (`.ci/run` installs it), driven headless by Playwright with a fresh profile: it opens
the page, uploads a bundled picture, asks its question and a follow-up, and must find the right answers (the toy
task's ground truth, from the bundled examples) in the chat; no request may leave 127.0.0.1. A written Space folder
serves the same API from a venv holding only its requirements.txt.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from modeling_mmfuser_llava.demo import bundled_examples, write_trained_tiny_hub_folder
from modeling_mmfuser_llava.web_space import write_space
from isolated_venv import cached_venv, start_as_user
from test_web import bomb_png

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
START_TIMEOUT_SECONDS = 300
ANSWER_TIMEOUT_SECONDS = 180


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running(process: subprocess.Popen, url: str, log: Path) -> Iterator[str]:
    """`url` once `process` (which leads its own session) serves it; stops the process by its PID afterwards."""
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not page_answers(url):
            if process.poll() is not None:
                pytest.fail(f"the server exited with {process.returncode}:\n{log.read_text()[-8000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no page at {url} after {START_TIMEOUT_SECONDS} s:\n{log.read_text()[-8000:]}")
            time.sleep(1)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def page_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def ask(url: str, picture: Path, question: str) -> str:
    """The answer of the page's `/chat` API, through gradio_client."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, download_files=False, httpx_kwargs={"timeout": 60})
    return client.submit(handle_file(str(picture)), question, api_name="/chat").result(timeout=ANSWER_TIMEOUT_SECONDS)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    """`mmfuser-llava web` with its defaults (the bundled model) on a free port; its URL."""
    folder = tmp_path_factory.mktemp("web-server")
    port = free_port()
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_TEMP_DIR": str(folder / "gradio"),
                   "TOKENIZERS_PARALLELISM": "false"}
    with open(folder / "server.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "modeling_mmfuser_llava.cli", "web", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True,
        )
    with running(process, f"http://127.0.0.1:{port}/", folder / "server.log") as url:
        yield url


def test_chat_api_through_gradio_client(server, tmp_path):
    from gradio_client.exceptions import AppError

    for example in bundled_examples():
        question = example["questions"][0]
        assert ask(server, example["image"], question["question"]) == question["answer"]
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    with pytest.raises(AppError, match="notes.txt is not a picture this page can read"):
        ask(server, notes, "what colour")


def test_hostile_requests_get_messages_and_the_page_answers_after(server, tmp_path):
    """The issue's probe: a decompression bomb (20000x20000, a few hundred KB) got Gradio's generic "The upstream
    Gradio app has raised an exception" and a 20000-word question held the single queue for a minute; now each gets
    its message at once, sent together with ordinary questions, and the page answers the next question right."""
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client.exceptions import AppError

    example = bundled_examples()[0]
    question = example["questions"][0]
    bomb = bomb_png(tmp_path / "bomb.png", 20000, 20000)
    hostile = {"bomb": (bomb, question["question"]), "long": (example["image"], "what colour " * 20000)}
    ordinary = {f"ordinary {index}": (example["image"], question["question"]) for index in range(8)}
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=10) as pool:
        futures = {name: pool.submit(ask, server, *request) for name, request in {**hostile, **ordinary}.items()}
    for name in ordinary:
        assert futures[name].result() == question["answer"], name
    with pytest.raises(AppError, match=r"bomb\.png is too large: this page takes pictures of up to 40 megapixels"):
        futures["bomb"].result()
    with pytest.raises(AppError, match=r"The question is too long: .* takes \d+ tokens"):
        futures["long"].result()
    assert time.monotonic() - started < ANSWER_TIMEOUT_SECONDS
    assert ask(server, example["image"], question["question"]) == question["answer"]


def test_space_folder_serves_the_page_without_this_package(tmp_path):
    """The Space folder for a model, run as a Space runs it (`python app.py`, host and port from Gradio's
    environment) in a venv holding only its requirements.txt: its API answers the bundled question right."""
    model = write_trained_tiny_hub_folder(tmp_path / "model")
    space = write_space(tmp_path / "space", str(model))
    python = cached_venv("web-space", (space / "requirements.txt").read_text().split())
    port = free_port()
    process = start_as_user(python, ["app.py"], cwd=space, log=tmp_path / "space.log", GRADIO_SERVER_NAME="127.0.0.1",
                            GRADIO_SERVER_PORT=str(port), GRADIO_TEMP_DIR=str(tmp_path / "gradio"))
    example = bundled_examples()[2]
    with running(process, f"http://127.0.0.1:{port}/", tmp_path / "space.log") as url:
        for question in example["questions"][:2]:
            assert ask(url, example["image"], question["question"]) == question["answer"]


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_page_in_a_browser_answers_the_bundled_question(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    example = bundled_examples()[1]
    first, follow_up = example["questions"][0], example["questions"][2]
    outside = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 1000},
        )
        try:
            page = browser.new_page()
            page.on("request", lambda request: None if request.url.startswith((server, "data:", "blob:"))
                    else outside.append(request.url))
            page.set_default_timeout(60_000)
            page.goto(server)
            page.locator("#picture input[type=file]").set_input_files(str(example["image"]))
            expect(page.locator("#picture img")).to_be_visible()
            bot_messages = page.locator("#chat [data-testid=bot]")
            timings = []
            for count, question in enumerate((first, follow_up), start=1):
                page.locator("#question textarea").fill(question["question"])
                start = time.perf_counter()
                page.locator("#ask").click()
                expect(bot_messages).to_have_count(count, timeout=ANSWER_TIMEOUT_SECONDS * 1000)
                expect(bot_messages.nth(count - 1)).to_have_text(question["answer"],
                                                                 timeout=ANSWER_TIMEOUT_SECONDS * 1000)
                timings.append(time.perf_counter() - start)
            user_messages = page.locator("#chat [data-testid=user]")
            expect(user_messages).to_have_text([first["question"], follow_up["question"]])
            page.screenshot(path=str(tmp_path / "web-demo.png"), full_page=True)
            # An example of another picture: the new picture starts a new conversation, its question fills the box.
            picked = bundled_examples()[0]["questions"][1]
            page.locator("#examples [data-testid=dataset-cell-1-1]").click()
            expect(page.locator("#question textarea")).to_have_value(picked["question"])
            expect(bot_messages).to_have_count(0)
            page.locator("#ask").click()
            expect(bot_messages).to_have_text([picked["answer"]], timeout=ANSWER_TIMEOUT_SECONDS * 1000)
            page.locator("#clear").click()
            expect(user_messages).to_have_count(0)
        finally:
            browser.close()
    print(f"\nthe page answered in {timings[0]:.2f} s, the follow-up in {timings[1]:.2f} s "
          f"(screenshot: {tmp_path / 'web-demo.png'})")
    assert (tmp_path / "web-demo.png").stat().st_size > 10_000
    assert outside == []  # no analytics, fonts or anything else from the network
    if os.environ.get("MMFUSER_LLAVA_WEB_SCREENSHOT"):  # how docs/images/web-demo.png is made
        shutil.copyfile(tmp_path / "web-demo.png", os.environ["MMFUSER_LLAVA_WEB_SCREENSHOT"])
