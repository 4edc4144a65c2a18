"""Create the anchors' virtual environments, apart from flowtrail's own.

    .venv/bin/python benchmarks/compare/setup_envs.py [--force]

benchmarks/.venvs/prefect        Prefect 3.9.1 and its requirements
benchmarks/.venvs/eventsourcing  eventsourcing 9.5.6 (SQLite is in the standard library)

Both use the interpreter flowtrail's venv was made from, so the three sides run on
the same Python. An environment whose stamp names the same pins is left as it is.

Prefect 3.9.1 requires ``certifi>=2026.10.19``, a release a package index may not have
yet (the one reachable here did not at first). Prefect is therefore installed with
``--no-deps`` and its other requirements are read from the wheel's METADATA and
installed with the certifi pin dropped (the newest certifi the index has is installed,
which meets the pin where the index has such a release). certifi is the CA
bundle for outgoing HTTPS, which these benchmarks never make: the server is local.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

VENVS = Path(__file__).resolve().parent.parent / ".venvs"
PREFECT = "prefect==3.9.1"
EVENTSOURCING = "eventsourcing==9.5.6"
#: Requirements whose pins cannot be met from the index here: name -> what is installed instead.
RELAXED = {"certifi": "certifi"}

_READ_REQUIREMENTS = """
import json, sys
from importlib.metadata import distribution
from packaging.requirements import Requirement
wanted = []
for text in distribution(sys.argv[1]).requires or []:
    requirement = Requirement(text)
    # Extras are optional integrations; the markers are judged for this interpreter.
    if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
        continue
    wanted.append([requirement.name, text.split(";")[0].strip()])
print(json.dumps(wanted))
"""


def base_python() -> str:
    """The interpreter behind flowtrail's venv (a venv made from a venv would chain)."""
    return getattr(sys, "_base_executable", sys.executable)


def run(*command: str | Path) -> str:
    shown = ("<script>" if "\n" in str(part) else str(part) for part in command)
    print("+", " ".join(shown), flush=True)
    done = subprocess.run([str(part) for part in command], check=True, capture_output=True, text=True)
    return done.stdout


def fresh_venv(path: Path, stamp: dict[str, object], force: bool) -> Path | None:
    """The venv's python when it must be (re)built, None when its stamp is current."""
    marker = path / ".installed.json"
    if not force and marker.exists() and json.loads(marker.read_text()) == stamp:
        print(f"{path} is up to date", flush=True)
        return None
    run(base_python(), "-m", "venv", "--clear", path)
    python = path / "bin" / "python"
    run(python, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    return python


def setup_prefect(force: bool) -> None:
    path = VENVS / "prefect"
    stamp = {"install": PREFECT, "relaxed": RELAXED}
    python = fresh_venv(path, stamp, force)
    if python is None:
        return
    run(python, "-m", "pip", "install", "--quiet", "--no-deps", PREFECT)
    # packaging is one of Prefect's own requirements, so reading them with it adds nothing foreign.
    run(python, "-m", "pip", "install", "--quiet", "packaging")
    wanted = json.loads(run(python, "-c", _READ_REQUIREMENTS, "prefect"))
    requirements = [RELAXED.get(name, spec) for name, spec in wanted]
    relaxed = [spec for name, spec in wanted if name in RELAXED]
    print(f"relaxed for this index: {', '.join(relaxed) or 'nothing'}", flush=True)
    run(python, "-m", "pip", "install", "--quiet", *requirements)
    # pip check passes, or names the relaxed pin and nothing else (when the index has no
    # release meeting it); anything more is a broken install.
    check = subprocess.run([str(python), "-m", "pip", "check"], capture_output=True, text=True, check=False)
    problems = [
        line
        for line in check.stdout.splitlines()
        if check.returncode != 0 and line.strip() and not any(name in line for name in RELAXED)
    ]
    if problems:
        raise SystemExit("the Prefect environment is inconsistent:\n" + "\n".join(problems))
    run(python, "-c", "import prefect")
    # What was resolved, for the record: the pins above leave the newest matching releases.
    (path / "freeze.txt").write_text(run(python, "-m", "pip", "freeze"))
    (path / ".installed.json").write_text(json.dumps(stamp))


def setup_eventsourcing(force: bool) -> None:
    path = VENVS / "eventsourcing"
    stamp = {"install": EVENTSOURCING}
    python = fresh_venv(path, stamp, force)
    if python is None:
        return
    run(python, "-m", "pip", "install", "--quiet", EVENTSOURCING)
    run(python, "-c", "import eventsourcing.sqlite, eventsourcing.application")
    (path / "freeze.txt").write_text(run(python, "-m", "pip", "freeze"))
    (path / ".installed.json").write_text(json.dumps(stamp))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--force", action="store_true", help="rebuild both environments")
    args = parser.parse_args()
    VENVS.mkdir(exist_ok=True)
    setup_eventsourcing(args.force)
    setup_prefect(args.force)


if __name__ == "__main__":
    main()
