"""The README runs as written: every `sh` block of README.md, command by command and in
order, in a fresh folder laid out like a clone, against `modelroute serve` with `make run`'s
defaults (embedded etcd + SQLite in ./.modelroute; only the ports are free ones). A
`# → a, b` comment after a command lists text its output must contain, `exit code N` the
exit code it must end with (default 0). README and test cannot drift apart."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from modelroute.storage.instance_file import read_instance

from tests.helpers import ServerProcess, eventually

REPOSITORY = Path(__file__).resolve().parent.parent
README = REPOSITORY / "README.md"
EXPECT = " # → "
HEREDOC = re.compile(r"<<-?\s*'?\"?(\w+)'?\"?")
EXIT_CODE = re.compile(r"^exit code (\d+)$")


@dataclass
class TourCommand:
    source: str  # what bash runs (continuation lines and heredoc bodies included)
    line: int  # where it starts in README.md
    expected: list[str] = field(default_factory=list)
    exit_code: int = 0


def tour_commands(markdown: str) -> list[TourCommand]:
    """The commands of every ```sh block, with the expectations of their `# →` comments."""
    commands: list[TourCommand] = []
    lines = markdown.splitlines()
    index, in_block = 0, False
    while index < len(lines):
        line = lines[index]
        index += 1
        if line.strip().startswith("```"):
            in_block = not in_block and line.strip() == "```sh"
            continue
        if not in_block or not line.strip() or line.lstrip().startswith("#"):
            continue
        start = index
        physical = [line]
        while physical[-1].rstrip().endswith("\\"):
            physical.append(lines[index])
            index += 1
        code, _, expectation = "\n".join(physical).partition(EXPECT)
        if heredoc := HEREDOC.search(code):
            while lines[index].strip() != heredoc.group(1):
                physical.append(lines[index])
                code += "\n" + lines[index]
                index += 1
            code += "\n" + lines[index]
            index += 1
        command = TourCommand(code, start)
        for item in filter(None, (part.strip() for part in expectation.split(", "))):
            if match := EXIT_CODE.match(item):
                command.exit_code = int(match.group(1))
            else:
                command.expected.append(item)
        commands.append(command)
    return commands


def test_the_parser_reads_commands_expectations_and_heredocs() -> None:
    markdown = (
        "```sh\n# comment\nsource env\nrun a   # → one, two, exit code 4\n"
        "cat > f <<'EOF'\nx: 1\nEOF\nlong \\\n  arg\n```\n```bash\nnot run\n```\n"
    )
    commands = tour_commands(markdown)
    assert [c.source for c in commands] == [
        "source env",
        "run a  ",
        "cat > f <<'EOF'\nx: 1\nEOF",
        "long \\\n  arg",
    ]
    assert (commands[1].expected, commands[1].exit_code) == (["one", "two"], 4)


def clone_like_folder(folder: Path) -> None:
    """What the README assumes: the repository's config/ and its .venv (make install)."""
    venv = Path(sys.prefix)
    assert (venv / "bin" / "activate").exists(), "run the tests from the .venv (make install)"
    (folder / ".venv").symlink_to(venv)
    (folder / "config").symlink_to(REPOSITORY / "config")


def run_in(
    folder: Path, setup: list[str], command: TourCommand
) -> subprocess.CompletedProcess[str]:
    script = "\n".join([*setup, command.source])
    return subprocess.run(
        ["bash", "-c", script],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
        # A user's clean shell: nothing tells the CLI where the server is but the folder.
        env={"PATH": "/usr/bin:/bin", "HOME": str(folder), "LANG": "C.UTF-8"},
    )


@pytest.mark.slow
async def test_readme_tour_runs_end_to_end(tmp_path: Path) -> None:
    commands = tour_commands(README.read_text())
    assert len(commands) >= 15, "the tour lost its commands?"
    clone_like_folder(tmp_path)
    server = await asyncio.to_thread(ServerProcess, [], cwd=tmp_path)
    try:
        setup: list[str] = []
        for command in commands:
            where = f"README.md:{command.line}: {command.source}"

            async def ran_as_documented(command: TourCommand = command, where: str = where) -> None:
                done = await asyncio.to_thread(run_in, tmp_path, setup, command)
                output = done.stdout + done.stderr
                assert done.returncode == command.exit_code, f"{where}\n{output}"
                for text in command.expected:
                    assert text in output, f"{where}\nexpected {text!r} in:\n{output}"

            # A change reaches the server through etcd's watch: give a claim a moment.
            await eventually(ran_as_documented, timeout=10, interval=0.2)
            if command.source.startswith(("source ", "export ")):
                setup.append(command.source)

        # The dashboard is where the README says.
        info = read_instance(tmp_path / ".modelroute")
        assert info is not None and info.admin_url
        async with httpx.AsyncClient() as client:
            root = await client.get(info.admin_url)
        assert root.status_code in (302, 307) and root.headers["location"] == "/dashboard/"
    finally:
        assert await asyncio.to_thread(server.stop) == 0
