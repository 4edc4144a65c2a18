"""What every benchmark shares: the machine line and where figures are written."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def machine() -> str:
    """One line naming the machine and the interpreter the figures come from."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {sys.version.split()[0]}"


def python_speed_us(rounds: int = 7, loops: int = 2000) -> float:
    """Microseconds for ``sum(range(1000))``, the best of a few rounds: a yardstick of the
    interpreter's speed on this machine, so that figures taken on two machines can be set
    side by side (every flowtrail figure that is not I/O-bound moves with it)."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(loops):
            sum(range(1000))
        best = min(best, (time.perf_counter() - start) / loops * 1e6)
    return round(best, 2)


def emit(name: str, figures: dict[str, object]) -> None:
    """Write a benchmark's figures to benchmarks/results/NAME.json (read by run_all.py)."""
    RESULTS.mkdir(exist_ok=True)
    payload = {
        "benchmark": name,
        "machine": machine(),
        "python_speed_us": python_speed_us(),
        "figures": figures,
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
