"""The README's examples run as written, and its command list is the CLI's."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
CONSOLE = "".join(re.findall(r"```console\n(.*?)```", README.read_text(), flags=re.DOTALL))
COMMANDS = re.findall(r"^flowtrail (?:--\S+ \S+ )*([a-z][a-z-]*)", CONSOLE, flags=re.MULTILINE)


def run(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    environment = os.environ | {"HOME": str(cwd), "FLOWTRAIL_DATABASE_URL": f"sqlite:///{cwd}/flows.db"}
    return subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_readme_has_its_examples() -> None:
    assert len(BLOCKS) == 3


def test_the_flow_example_prints_what_its_comments_say(tmp_path: Path) -> None:
    done = run(BLOCKS[0], tmp_path)
    assert done.returncode == 0, done.stderr
    # structlog's default configuration prints the engine's log lines to stdout: skip them.
    lines = [line for line in done.stdout.splitlines() if not re.match(r"\d{4}-\d\d-\d\d ", line)]
    assert lines[0] == "1250"
    assert lines[1].startswith("Completed ")


def test_the_sync_embedding_example_prints_what_its_comments_say(tmp_path: Path) -> None:
    done = run(BLOCKS[1], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "AwaitingRetry Retrying",
        "1",
        "['Pending', 'Running', 'AwaitingRetry']",
    ]


def test_the_async_embedding_example_prints_what_its_comments_say(tmp_path: Path) -> None:
    done = run(BLOCKS[2], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "{'ACCEPT'}"


@pytest.mark.parametrize("command", sorted(set(COMMANDS)))
def test_each_command_the_readme_lists_exists(command: str) -> None:
    entry_point = shutil.which("flowtrail", path=str(Path(sys.executable).parent))
    assert entry_point is not None
    done = subprocess.run(
        [entry_point, command, "--help"], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
