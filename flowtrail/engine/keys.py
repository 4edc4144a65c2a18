"""The keys that make creations and proposals idempotent, as the log stores them.

A restarted caller that creates the same run or proposes with the same key again gets
the first answer back instead of a second write; these functions spell those keys.
"""

from __future__ import annotations

import hashlib
import json
import uuid

__all__ = ["MAX_STORED_KEY", "loose_task_run_key", "stored_key", "task_run_key"]

#: The longest key the log stores (`flowtrail.store.api`).
MAX_STORED_KEY = 512


def stored_key(kind: str, *parts: str, ambiguous: bool = False) -> str:
    """The key an append is made idempotent on, for ``kind`` and its parts.

    Spelled ``kind:part:part`` (each part formatted as an f-string formats it, as keys
    always were), unless the caller says that spelling could also be another list of
    parts (``ambiguous``), or it is too long or not printable for the log: then
    ``kind#`` and the SHA-256 of the parts in JSON. Keys spelled plainly before are
    spelled the same way, so a log keeps recognising them.
    """
    plain = ":".join(f"{part}" for part in (kind, *parts))
    if not ambiguous and len(plain) <= MAX_STORED_KEY and plain.isprintable():
        return plain
    return f"{kind}#{hashlib.sha256(json.dumps([f'{part}' for part in parts]).encode()).hexdigest()}"


def task_run_key(flow_run: uuid.UUID, task_key: str, dynamic: str) -> str:
    """A task run's key in its flow run: one per (flow run, task key, dynamic key)."""
    return stored_key("task-run", str(flow_run), task_key, dynamic, ambiguous=":" in f"{task_key}{dynamic}")


def loose_task_run_key(key: str) -> str:
    """A task run's key outside any flow run, never the spelling of one inside a flow run
    (``task-run:<run id>:<task key>:<dynamic key>``)."""
    first, _, rest = f"{key}".partition(":")
    try:
        in_a_flow_run = str(uuid.UUID(first)) == first and rest.count(":") == 1
    except ValueError:
        in_a_flow_run = False
    return stored_key("task-run", key, ambiguous=in_a_flow_run)
