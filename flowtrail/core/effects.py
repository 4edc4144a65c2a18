"""The effects a script yields, and the type of a script.

Logic that interleaves I/O with decisions (append, propose-with-retry, projection
updates, rebuild, catch-up) is written once, as a generator that yields these effects
and receives their results, in the manner of httpx's auth flows. A sync driver and an
async driver carry them out (``flowtrail.store.drivers``); a driver error comes back
into the script as a `flowtrail.core.errors.FlowtrailError` thrown at the ``yield``.

SQL is written with ``?`` placeholders; each backend adapts it to its driver.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

if TYPE_CHECKING:
    from flowtrail.core.events import Event

__all__ = [
    "Append",
    "Begin",
    "Commit",
    "Effect",
    "Execute",
    "ExecuteMany",
    "Fetch",
    "Join",
    "Joinable",
    "Locked",
    "OnWriter",
    "Rollback",
    "Row",
    "Script",
    "StreamWrite",
]

T = TypeVar("T")

#: A result row, as a tuple of column values.
Row = tuple[Any, ...]

#: A script: yields effects, receives their results, returns a ``T``.
Script = Generator["Effect", Any, T]


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


class StreamWrite(NamedTuple):
    """Events to append to one stream, which must be at ``expected_version``.

    ``expected_version=0`` means the stream must not exist yet; ``None`` appends at the
    end whatever the version (no concurrency check).
    """

    stream_id: str
    events: Sequence[Event]
    expected_version: int | None


class Append(NamedTuple):
    """Append through the store's own write path (checked, grouped, with its projections).

    The result is the store's ``AppendResult``; a conflict is thrown into the script.
    ``expect`` names streams that must be at a version without being written.
    ``known`` hands the inline projections what the caller already holds of the
    streams written (e.g. their views before these events), so they need not read it.
    """

    writes: Sequence[StreamWrite]
    idempotency_key: str | None = None
    expect: Mapping[str, int] | None = None
    known: Mapping[str, object] | None = None


class Locked(NamedTuple):
    """Run a script of reads (`Fetch`) and appends (`Append`) in one write transaction,
    holding the log's write lock from its first read to its end: it reads every write
    committed before it, and no other writer can move a stream between its reads and
    its appends. The result is the script's result; where the script raises, nothing it
    appended remains.

    For a write that keeps losing to concurrent writers: decided under the lock, it
    cannot lose again. Every other writer waits meanwhile, so the script should be short.
    """

    script: Script[Any]


class OnWriter(NamedTuple):
    """Run a script of SQL effects on the writer connection; the result is its result.

    Lets a long operation (a rebuild, a catch-up) read between its write transactions
    without holding the write lock throughout. The script begins and ends its own
    transactions.
    """

    script: Script[Any]


class Joinable(Protocol):
    """Work going on outside the script (helper processes); ``join`` waits for its end."""

    def join(self) -> Any: ...


class Join(NamedTuple):
    """Wait for ``work`` to end; the result is what its ``join`` returns.

    The sync driver calls it where it stands; the async one on a worker thread, so that
    the event loop goes on meanwhile.
    """

    work: Joinable


Effect = Begin | Commit | Rollback | Execute | ExecuteMany | Fetch | Append | Locked | OnWriter | Join
