"""Run ids: UUIDv7 (RFC 9562), time-ordered.

Ids that grow with time land at the end of every index keyed by them, instead of at
random places: SQLite and PostgreSQL write a fraction of the pages, and a log's runs
list in creation order by id alone.
"""

from __future__ import annotations

import os
import threading
import time
from uuid import UUID

__all__ = ["new_run_id"]

_lock = threading.Lock()
_last = [0, 0]  # the last (milliseconds, counter) handed out


if hasattr(os, "register_at_fork"):  # another thread of the parent may have held it
    os.register_at_fork(after_in_child=_lock._at_fork_reinit)  # type: ignore[attr-defined]


def new_run_id() -> UUID:
    """A new UUIDv7: 48 bits of Unix milliseconds, a 12-bit counter, 62 random bits.

    Within one millisecond the counter keeps ids of this process increasing.
    """
    with _lock:
        millis = time.time_ns() // 1_000_000
        if millis <= _last[0]:
            millis, counter = _last[0], _last[1] + 1
            if counter > 0xFFF:
                millis, counter = millis + 1, 0
        else:
            counter = int.from_bytes(os.urandom(2), "big") & 0x3FF  # leave room to count up
        _last[0], _last[1] = millis, counter
    random_bits = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (millis & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | random_bits
    return UUID(int=value)
