"""The README's commands work as written.

A fenced block right after a line ``<!-- offline: ... -->`` claims to work on this machine with
nothing but the set-up (no network, no service of one's own): each of its commands exits 0,
or the code its comment names (``# exit 1``). The commands of a ``sh`` block are its lines
(comment lines aside); those of a ``text`` block, a transcript, are its ``$ `` lines (their
output is an example, not checked). Every marked block runs in order in **one** shell, as a
reader following the README would type them, starting without ``i3lani`` on ``PATH`` (the
README's own ``source .venv/bin/activate`` must put it there), in a directory of its own
whose ``.venv`` is this test run's environment, against this test's database.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
_MARK = re.compile(r"<!-- offline\b.*-->")
_FENCE = re.compile(r"```(\w*)\s*$")
_EXIT = re.compile(r"#.*\bexit (\d+)\b[^#]*$")
_DONE = "@@i3lani-readme-exit"


@dataclass(frozen=True)
class Command:
    """One command of the README: where it stands, what it says, the exit code it promises."""

    line: int
    text: str
    exit_code: int


def offline_commands(markdown: str) -> list[Command]:
    """Every command of the blocks marked offline, in order. Pure."""
    commands: list[Command] = []
    lines = markdown.splitlines()
    for number, line in enumerate(lines):
        if not _MARK.fullmatch(line.strip()):
            continue
        fence = _FENCE.fullmatch(lines[number + 1]) if number + 1 < len(lines) else None
        if fence is None:
            raise AssertionError(f"README.md:{number + 1}: an offline mark not followed by a fence")
        transcript = fence[1] == "text"
        for at in range(number + 2, len(lines)):
            body = lines[at]
            if body.startswith("```"):
                break
            if transcript:
                if not body.startswith("$ "):
                    continue
                body = body[2:]
            if not body.strip() or body.lstrip().startswith("#"):
                continue
            promised = _EXIT.search(body)
            commands.append(Command(at + 1, body, int(promised[1]) if promised else 0))
    return commands


def test_the_readme_marks_its_offline_commands() -> None:
    commands = offline_commands(README.read_text(encoding="utf-8"))
    assert commands, "no block of README.md is marked <!-- offline: ... -->"
    assert commands[0].text.startswith("source .venv/bin/activate"), commands[0]
    assert any(c.exit_code != 0 for c in commands), "an exit code other than 0 is promised"


def test_a_transcript_runs_its_dollar_lines_with_their_promised_exit() -> None:
    markdown = "\n".join(
        [
            "<!-- offline: example -->",
            "```text",
            "$ i3lani status",
            "ACTOR  STATE",
            "$ i3lani restart X    # no worker: exit 1",
            "```",
            "```sh",
            "i3lani never-run",
            "```",
        ]
    )
    assert offline_commands(markdown) == [
        Command(3, "i3lani status", 0),
        Command(5, "i3lani restart X    # no worker: exit 1", 1),
    ]


@pytest.mark.process
async def test_every_offline_command_of_the_readme_exits_as_documented(
    dsn: str, clean_env: dict[str, str], tmp_path: Path
) -> None:
    commands = offline_commands(README.read_text(encoding="utf-8"))
    (tmp_path / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    own_bin = str(Path(sys.prefix) / "bin")
    path = os.pathsep.join(p for p in clean_env.get("PATH", "").split(os.pathsep) if p != own_bin)
    env = {k: v for k, v in clean_env.items() if k != "VIRTUAL_ENV"}
    env |= {"PATH": path, "DATABASE_URL": dsn, "I3LANI_HOME": str(tmp_path / "home")}
    script = "\n".join(f"{command.text}\nprintf '\\n{_DONE} %s\\n' $?" for command in commands)
    with anyio.fail_after(120):
        result = await anyio.run_process(
            ["bash", "--norc", "--noprofile", "-c", script], env=env, cwd=tmp_path, check=False
        )
    output = result.stdout.decode(errors="replace")
    exits = [int(code) for code in re.findall(rf"^{_DONE} (\d+)$", output, re.MULTILINE)]
    assert len(exits) == len(commands), output + result.stderr.decode(errors="replace")
    wrong = [
        f"README.md:{command.line}: `{command.text}` exited {got}, the README says "
        f"{command.exit_code}"
        for command, got in zip(commands, exits, strict=True)
        if got != command.exit_code
    ]
    assert not wrong, "\n".join([*wrong, output, result.stderr.decode(errors="replace")])
