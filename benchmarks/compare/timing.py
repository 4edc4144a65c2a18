"""What the side-by-side scripts share. Standard library only: each script runs in
its own virtual environment (flowtrail's, Prefect's or eventsourcing's)."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from typing import Any


def timed(call: Callable[[], Any], count: int) -> tuple[float, Any]:
    """Milliseconds per call over ``count`` calls, and the last call's answer."""
    answer = None
    start = time.perf_counter()
    for _ in range(count):
        answer = call()
    return (time.perf_counter() - start) / count * 1e3, answer


def uuid7() -> uuid.UUID:
    """A time-ordered UUID (version 7), as flowtrail gives its runs.

    Both stores key their rows on the stream id; ordered ids keep inserts at the end
    of that index on both sides, so neither pays for random page splits the other
    does not (Python 3.11 has no uuid.uuid7).
    """
    millis = time.time_ns() // 1_000_000
    value = (millis & ((1 << 48) - 1)) << 80 | int.from_bytes(os.urandom(10), "big")
    value &= ~(0xF << 76)
    value |= 0x7 << 76
    value &= ~(0x3 << 62)
    value |= 0x2 << 62
    return uuid.UUID(int=value)


def answer(path: str, payload: dict[str, Any]) -> None:
    """Write a scenario script's figures as JSON to the file the driver named (not
    stdout, which the engines under test may print their own lines on)."""
    with open(path, "w") as out:
        json.dump(payload, out)
