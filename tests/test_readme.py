"""The README and the tool agree: every `recogen ...` command shown in the README's shell blocks parses
with the real command-line parser (options renamed or removed in the code fail here)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from recogen import cli

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_commands() -> list[str]:
    """``recogen`` command lines of the README's ```bash blocks, continuation lines joined."""
    text = README.read_text()
    cmds: list[str] = []
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if line.startswith("recogen "):
                cmds.append(line)
    return cmds


def to_argv(line: str) -> list[str]:
    """The argument list of one README line: comments dropped, optional ``[--flag ...]`` parts kept
    (they must parse too), alternatives ``a|b`` reduced to the first."""
    line = re.sub(r"\[(-[^\]]*)\]", r"\1", line)  # "[--json]" -> "--json"
    argv = shlex.split(line, comments=True)[1:]
    return [a.split("|")[0] if re.fullmatch(r"[\w.:-]+(\|[\w.:-]+)+", a) else a for a in argv]


COMMANDS = readme_commands()


def test_the_readme_shows_commands():
    assert len(COMMANDS) >= 40  # the README documents the tool by example


@pytest.mark.parametrize("line", COMMANDS)
def test_readme_command_parses(line, monkeypatch):
    argv = to_argv(line)
    parser = cli.build_parser()
    monkeypatch.setenv("KEY", "not-empty")  # "$KEY" is expanded by the shell, not here
    try:
        ns = parser.parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"README command does not parse (exit {e.code}): {line}")
    assert callable(getattr(ns, "func", None)), line
