"""The effects a script yields, and the type of a script.

Logic that interleaves I/O with decisions (append, propose-with-retry, projection
updates, rebuild, catch-up) is written once, as a generator that yields these effects
and receives their results, in the manner of httpx's auth flows. A sync driver and an
async driver carry them out (``flowtrail.store.drivers``); a driver error comes back
into the script as a `flowtrail.core.errors.FlowtrailError` thrown at the ``yield``.

SQL is written with ``?`` placeholders; each backend adapts it to its driver.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any, NamedTuple, TypeVar

__all__ = [
    "Begin",
    "Commit",
    "Effect",
    "Execute",
    "ExecuteMany",
    "Fetch",
    "Rollback",
    "Row",
    "Script",
]

T = TypeVar("T")

#: A result row, as a tuple of column values.
Row = tuple[Any, ...]


class Begin(NamedTuple):
    """Start a write transaction, holding the database's write lock until it ends."""


class Commit(NamedTuple):
    """Commit the write transaction (durably, as the store's durability mode says)."""


class Rollback(NamedTuple):
    """Abandon the write transaction; nothing it wrote remains."""


class Execute(NamedTuple):
    """Run one statement; the result is None."""

    sql: str
    params: Sequence[object] = ()


class ExecuteMany(NamedTuple):
    """Run one statement once per row of parameters; the result is None."""

    sql: str
    rows: Sequence[Sequence[object]]


class Fetch(NamedTuple):
    """Run a query; the result is a list of `Row`."""

    sql: str
    params: Sequence[object] = ()


Effect = Begin | Commit | Rollback | Execute | ExecuteMany | Fetch

#: A script: yields effects, receives their results, returns a ``T``.
Script = Generator[Effect, Any, T]
