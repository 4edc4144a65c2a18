"""How long ``import flowtrail`` takes in a fresh interpreter.

    .venv/bin/python benchmarks/bench_import.py

Each sample is a new process (a warm file cache and compiled bytecode, as on a second
run of any program: the children may write bytecode even where this process's
environment says not to, or every sample would compile the package again, twice the time):
the wall time of ``python -c "import flowtrail"`` less that of ``python -c "pass"``,
measured alternately. Target <= 150 ms. Also prints the heaviest modules it loads,
from ``-X importtime``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

from common import emit

#: This environment, less any PYTHONDONTWRITEBYTECODE (see the module's docstring).
ENVIRONMENT = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}


def wall(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=ENVIRONMENT)
    return time.perf_counter() - start


def heaviest(count: int = 6) -> list[tuple[str, float]]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import flowtrail"],
        capture_output=True,
        text=True,
        check=True,
        env=ENVIRONMENT,
    )
    rows = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|")
        if cumulative.strip().isdigit():
            rows.append((name.strip(), int(cumulative) / 1000))
    top_level = [(name, ms) for name, ms in rows if not name.startswith(" ") and "." not in name]
    return sorted(top_level, key=lambda row: -row[1])[:count]


def main() -> None:
    wall("import flowtrail")  # fill the file cache
    imports, bare = [], []
    for _ in range(20):
        imports.append(wall("import flowtrail"))
        bare.append(wall("pass"))
    net = [(a - b) * 1e3 for a, b in zip(imports, bare, strict=True)]
    result = {
        "import_ms": {"median": statistics.median(net), "min": min(net), "max": max(net)},
        "interpreter_ms": statistics.median(bare) * 1e3,
        "heaviest": heaviest(),
    }
    print(
        f"import flowtrail: {result['import_ms']['median']:.0f} ms (min {min(net):.0f}, max {max(net):.0f}) "
        f"beyond a bare interpreter's {result['interpreter_ms']:.0f} ms (target <= 150 ms)"
    )
    print("heaviest top-level imports:", ", ".join(f"{name} {ms:.0f} ms" for name, ms in result["heaviest"]))
    emit("import", result)


if __name__ == "__main__":
    main()
