"""The docs cannot drift from the tree or the CLI: links resolve, and every `mmfuser-llava` command they show parses."""

import re
import shlex
from pathlib import Path

import pytest

from modeling_mmfuser_llava.cli import COMMANDS, build_parser
from modeling_mmfuser_llava.training.arguments import build_argument_parser

REPO_ROOT = Path(__file__).resolve().parents[1]
PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE_BLOCK = re.compile(r"^```([^\n]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}
# How a shown command line calls the CLI: `mmfuser-llava SUB` or `python -m modeling_mmfuser_llava.cli SUB`.
CLI_NAMES = {"mmfuser-llava", "modeling_mmfuser_llava.cli"}
CLI_CALL = re.compile(r"(^|\s)(mmfuser-llava|modeling_mmfuser_llava\.cli)\s")


def page_id(page: Path) -> str:
    return str(page.relative_to(REPO_ROOT))


def heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors of a Markdown page's headings (lower case, punctuation dropped, spaces to hyphens)."""
    text = CODE_BLOCK.sub("", page.read_text())
    headings = re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def test_the_docs_are_found():
    assert len(PAGES) >= 8 and all(page.exists() for page in PAGES)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_relative_links_and_images_resolve(page):
    text = CODE_BLOCK.sub("", page.read_text())
    links = [link for link in LINK.findall(text) if not re.match(r"[a-z]+:", link)]
    assert links or page.name != "README.md", "the README links no page"
    for link in links:
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.exists(), f"{page_id(page)} links {link}: {target} does not exist"
        if anchor and target.suffix == ".md":
            assert anchor in heading_anchors(target), f"{page_id(page)} links {link}: no such heading"


def shown_commands(page: Path) -> list[list[str]]:
    """The command lines of a page's code blocks that call the CLI, continuation lines joined, comments dropped."""
    commands = []
    for language, block in CODE_BLOCK.findall(page.read_text()):
        if language.strip() not in SHELL_LANGUAGES:
            continue
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0]
            if not CLI_CALL.search(line):
                continue
            words = shlex.split(line)
            starts = [index for index, word in enumerate(words) if word in CLI_NAMES]
            if starts:
                commands.append(words[starts[0] + 1:])
    return commands


def option_strings(parser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def test_shown_commands_name_existing_subcommands_and_options():
    subparsers = next(action for action in build_parser()._actions if action.dest == "command").choices
    checked = 0
    for page in PAGES:
        for words in shown_commands(page):
            assert words and words[0] in subparsers, f"{page_id(page)}: `{' '.join(words)}` names no subcommand"
            parser = build_argument_parser() if words[0] == "train" else subparsers[words[0]]
            for word in words[1:]:
                option = word.strip("[]").split("=")[0]
                if option.startswith("--"):
                    assert option in option_strings(parser), f"{page_id(page)}: {words[0]} has no option {option}"
            checked += 1
    assert checked >= len(COMMANDS), "fewer CLI commands shown in the docs than the CLI has"


@pytest.mark.parametrize("name", COMMANDS)
def test_every_subcommand_help_ends_with_an_example(name, capsys):
    command = name.replace("_", "-")
    with pytest.raises(SystemExit) as exit_info:
        args = build_parser().parse_args([command, "--help"])
        args.run(args)  # only `train` gets here: it hands --help to its own parser
    assert exit_info.value.code == 0
    example = capsys.readouterr().out.split("example:\n", 1)[1].split()
    assert example[:2] == ["mmfuser-llava", command], example
