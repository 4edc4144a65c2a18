"""Bulk replays (rebuild, time travel, verify) hold hundreds of thousands of decoded
events and views at once. The cyclic garbage collector would rescan them again and
again although they cannot form cycles, which triples the cost of decoding; it is
paused for the replay and resumed after (anything collectable is collected then)."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["collector_paused"]


class _Pause:
    """How many replays are running, and whether the collector was on before the first."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.was_enabled = False


_pause = _Pause()


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic GC for the block; nested and concurrent blocks share one pause,
    and the collector resumes (if it was on) when the last one ends."""
    with _pause.lock:
        if _pause.count == 0:
            _pause.was_enabled = gc.isenabled()
            gc.disable()
        _pause.count += 1
    try:
        yield
    finally:
        with _pause.lock:
            _pause.count -= 1
            if _pause.count == 0 and _pause.was_enabled:
                gc.enable()
