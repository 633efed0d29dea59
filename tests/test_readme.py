"""The commands the README and the reference docs show are commands the CLI has.

Every ``feds2r ...`` line in a shell code block of README.md (and of the docs listed in
``DOCS``) must parse with feds2r's own argparse parser, built by :func:`feds2r.cli.build_parser`
exactly as ``feds2r`` builds it; nothing is run. The README's command table must name every
registered command, and only those; docs/data.md's formats listing is what ``feds2r data formats``
prints.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from feds2r.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README] + [
    ROOT / "docs" / name
    for name in ("data.md", "evaluation.md", "method.md", "results.md", "training.md", "world.md")
]

NOT_YET: dict[str, str] = {}
"""Commands the README may show before they are registered, and why (each is skipped, not
passed, while it is missing)."""

SHELL = {"", "bash", "sh", "shell", "console"}
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
SEPARATORS = {"&&", "||", ";", "|"}
CALLS_FEDS2R = re.compile(r"(?:^|[;&|])\s*(?:\S*/)?feds2r(?:\s|$)")


def shell_lines(text: str) -> Iterator[tuple[int, str]]:
    """The logical lines of ``text``'s shell code blocks, continuations (``\\`` at the end of a
    line) joined, each with the number of its first line in ``text``."""
    for block in FENCE.finditer(text):
        if block.group(1).lower() not in SHELL:
            continue
        first = text.count("\n", 0, block.start(2)) + 1
        pending, start = "", first
        for offset, line in enumerate(block.group(2).splitlines()):
            if not pending:
                start = first + offset
            if line.rstrip().endswith("\\") and not line.rstrip().endswith("\\\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            yield start, pending + line
            pending = ""
        if pending:
            yield start, pending


def _unbracket(tokens: list[str]) -> list[str]:
    """Optional parts written as ``[--tls --auth]`` become plain arguments."""
    out, inside = [], False
    for token in tokens:
        if token.startswith("[-"):
            token, inside = token[1:], True
        if inside and token.endswith("]"):
            token, inside = token[:-1], False
        out.append(token)
    return out


def feds2r_commands(text: str) -> Iterator[tuple[int, list[str]]]:
    """``(line, argv)`` for every ``feds2r`` command in ``text``'s shell code blocks: ``argv``
    is what follows ``feds2r`` (or ``.venv/bin/feds2r``), shell-split (quotes, ``\\&``,
    comments); commands chained with ``&&``, ``;`` or ``|`` are taken apart, and the others in
    the chain (``python3 -m venv``, ``pip install``) are left out."""
    for lineno, line in shell_lines(text):
        if not CALLS_FEDS2R.search(line):
            continue  # program output or another tool: not necessarily shell-quoted
        tokens = shlex.split(line, comments=True)
        command: list[str] = []
        for token in [*tokens, ";"]:
            if token not in SEPARATORS:
                command.append(token)
                continue
            if command and (command[0] == "feds2r" or command[0].endswith("/feds2r")):
                yield lineno, _unbracket(command[1:])
            command = []


def parse_error(argv: list[str]) -> str | None:
    """None when ``argv`` parses as a whole ``feds2r`` command, else argparse's message."""
    parser = build_parser(argv)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args = parser.parse_args(argv)
    except SystemExit as exc:
        lines = err.getvalue().strip().splitlines()
        return None if not exc.code else (lines[-1] if lines else f"exit {exc.code}")
    if getattr(args, "func", None) is None:
        return f"{' '.join(argv[:1])!r} alone is a group, not a command"
    return None


def registered_commands() -> set[tuple[str, ...]]:
    """Every runnable command of the full parser, as its words (``("server", "distill")``)."""

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
        groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not groups:
            yield path
        for action in groups:
            for name, child in action.choices.items():
                yield from walk(child, (*path, name))

    return set(walk(build_parser(), ()))


def table_commands(text: str) -> Iterator[tuple[int, tuple[str, ...]]]:
    """The command words of every table row that starts with a ```feds2r ...``` code span
    (``feds2r data check SPEC`` -> ``("data", "check")``)."""
    for lineno, line in enumerate(text.splitlines(), 1):
        match = re.match(r"\|\s*`feds2r ([^`]*)`", line)
        if match:
            words = []
            for word in match.group(1).split():
                if not re.fullmatch(r"[a-z][a-z0-9-]*", word):
                    break
                words.append(word)
            yield lineno, tuple(words)


def _doc_commands() -> list[tuple[str, int, list[str]]]:
    found = []
    for path in DOCS:
        if path.exists():
            for lineno, argv in feds2r_commands(path.read_text(encoding="utf-8")):
                found.append((path.relative_to(ROOT).as_posix(), lineno, argv))
    return found


DOC_COMMANDS = _doc_commands()
TABLE = list(table_commands(README.read_text(encoding="utf-8")))


def _skip_if_not_yet(words: tuple[str, ...] | list[str], registered: set[tuple[str, ...]]) -> None:
    if words and words[0] in NOT_YET and not any(c[:1] == (words[0],) for c in registered):
        pytest.skip(NOT_YET[words[0]])


@pytest.fixture(scope="module")
def registered() -> set[tuple[str, ...]]:
    return registered_commands()


@pytest.mark.parametrize(
    ("where", "lineno", "argv"),
    DOC_COMMANDS,
    ids=[f"{where}:{lineno}" for where, lineno, _ in DOC_COMMANDS],
)
def test_every_shown_command_parses(
    where: str, lineno: int, argv: list[str], registered: set[tuple[str, ...]]
) -> None:
    _skip_if_not_yet(argv, registered)
    error = parse_error(argv)
    assert error is None, f"{where}:{lineno}: feds2r {shlex.join(argv)}\n  {error}"


def test_the_readme_shows_the_demo_and_the_server_pipeline() -> None:
    readme = [argv for where, _, argv in DOC_COMMANDS if where == "README.md"]
    assert ["demo", "--out", "runs/demo"] in readme  # command 1, out of its `&&` chain
    shown = {tuple(argv[:2]) for argv in readme}
    assert {("server", "distill"), ("client", "train"), ("data", "check")} <= shown


@pytest.mark.parametrize(
    ("lineno", "words"), TABLE, ids=["feds2r " + " ".join(words) for _, words in TABLE]
)
def test_every_command_in_the_readme_table_is_registered(
    lineno: int, words: tuple[str, ...], registered: set[tuple[str, ...]]
) -> None:
    _skip_if_not_yet(words, registered)
    assert words in registered, f"README.md:{lineno}: `feds2r {' '.join(words)}` is no command"


def test_the_readme_table_names_every_command(registered: set[tuple[str, ...]]) -> None:
    missing = registered - {words for _, words in TABLE}
    assert not missing, "README's command table lacks: " + ", ".join(
        "feds2r " + " ".join(words) for words in sorted(missing)
    )


def test_continuations_escapes_chains_and_optional_parts_are_read() -> None:
    json_out = ["--json", "report.json"]
    text = (
        "```bash\n"
        "python3 -m venv .venv && .venv/bin/feds2r demo --out runs/demo  # the demo\n"
        "# a comment line\n"
        "feds2r data check acdc:/data/acdc?split=val\\&condition=night \\\n"
        "    --json report.json\n"
        "feds2r federate local --out runs/f [--tls --auth]\n"
        "```\n"
        "```python\n"
        "feds2r = 'not a command'\n"
        "```\n"
    )
    assert list(feds2r_commands(text)) == [
        (2, ["demo", "--out", "runs/demo"]),
        (4, ["data", "check", "acdc:/data/acdc?split=val&condition=night"] + json_out),
        (6, ["federate", "local", "--out", "runs/f", "--tls", "--auth"]),
    ]


def test_a_flag_or_command_the_cli_lacks_fails() -> None:
    text = (
        "```bash\n"
        "feds2r eval --model runs/m --data cityscapes:x?split=val --no-such-flag\n"
        "feds2r server no-such-command --out runs/x\n"
        "feds2r server\n"
        "```\n"
    )
    errors = [parse_error(argv) for _, argv in feds2r_commands(text)]
    assert errors[0] is not None and "--no-such-flag" in errors[0]
    assert errors[1] is not None and "no-such-command" in errors[1]
    assert errors[2] is not None and "group" in errors[2]
    assert parse_error(["eval", "--model", "runs/m", "--data", "cityscapes:x?split=val"]) is None


def test_a_table_row_that_names_no_command_is_found() -> None:
    rows = dict(table_commands("| `feds2r server distil` | typo |\n| `feds2r models` | ok |\n"))
    assert rows == {1: ("server", "distil"), 2: ("models",)}
    assert ("server", "distil") not in registered_commands()


def test_the_formats_listing_in_docs_data_is_what_the_command_prints(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from feds2r.cli import main

    text = (ROOT / "docs" / "data.md").read_text(encoding="utf-8")
    after = text.split("Output of `feds2r data formats`", 1)[1]
    shown = after.split("```\n", 2)[1]
    assert main(["data", "formats"]) == 0
    printed = capsys.readouterr().out
    assert shown == printed, "docs/data.md's formats listing differs from `feds2r data formats`"
