"""What a projection is, as the store and the engine see it.

A projection turns recorded events into rows of its own read tables. It is applied
either *inline*, by the store, inside the transaction that appends the events
(read-your-writes), or by a catch-up runner that tails the log from a checkpoint kept
in the same transaction as the rows. Either way the projection is a script of effects
(`flowtrail.core.effects`), so it never touches a connection itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, Protocol

from flowtrail.core.chain import RecordedEvent
from flowtrail.core.effects import Script
from flowtrail.core.events import Event

__all__ = ["LOG_TABLES", "Dialect", "Projection", "foreign_tables"]

#: The SQL dialects flowtrail writes.
Dialect = Literal["sqlite", "postgresql"]

#: The log's own tables: no projection may own (and so drop) one.
LOG_TABLES = frozenset({"flowtrail_meta", "events", "idempotency_keys", "checkpoints"})


def _plain_name(name: str) -> bool:
    """Letters, digits and underscores (ASCII), not starting with a digit, 63 at most."""
    return (
        0 < len(name) <= 63 and name.isascii() and name.replace("_", "a").isalnum() and not name[0].isdigit()
    )


def foreign_tables(tables: object, taken: frozenset[str]) -> str | None:
    """What is wrong with ``tables`` as the tables a projection owns, or None: each a
    plain SQL name (one a DROP TABLE may name as it is), none of them ``taken`` or the
    log's own, whatever its case (both dialects fold unquoted names)."""
    if isinstance(tables, str | bytes) or not isinstance(tables, Sequence):
        return f"tables is a list of table names, not {tables!r}"
    for table in tables:
        if not isinstance(table, str) or not _plain_name(table):
            return f"{table!r} is not a plain table name (letters, digits and _, 63 at most)"
        if table.lower() in LOG_TABLES | taken:
            return f"{table!r} is one of flowtrail's own tables, which a projection's rebuild would drop"
    return None


class Projection(Protocol):
    """A named, versioned read model over the log."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int:
        """Bumped when the tables or the way they are filled change: a rebuild follows."""
        ...

    @property
    def tables(self) -> Sequence[str]:
        """The tables the projection owns (dropped and recreated by a rebuild)."""
        ...

    def schema(self, dialect: Dialect) -> Sequence[str]:
        """Statements that create the tables and indexes if they do not exist."""
        ...

    def apply(
        self,
        records: Sequence[RecordedEvent],
        events: Sequence[Event],
        known: Mapping[str, object] | None = None,
    ) -> Script[None]:
        """Update the tables for ``records`` (``events[i]`` is ``records[i]`` decoded).

        Runs inside the caller's write transaction; must not begin or end one.
        ``known`` is what the appender said it holds of the streams written (a hint:
        the projection checks it before use, and may ignore it).
        """
        ...
