"""The orchestrator's own arguments, checked before anything is opened or written:
how it is opened (proposer, clock, attempts, no projections of the caller's), and
what a rebuild or a catch-up is given."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flowtrail.core.errors import InvalidInputError
from flowtrail.core.policies import MIRROR_PROPOSER
from flowtrail.core.projection import foreign_tables
from flowtrail.engine.checks import check_name, shown
from flowtrail.engine.operations import Clock
from flowtrail.projections.runs import RunViews

__all__ = [
    "check_catch_up",
    "check_rebuild",
    "checked_clock",
    "checked_max_attempts",
    "checked_proposer",
    "refuse_projections",
]


def checked_proposer(proposer: str) -> str:
    """A proposer's name, checked before anything is opened (every proposal records it)."""
    check_name(proposer, "proposer")
    if proposer == MIRROR_PROPOSER:
        # The audit tells the copies of subflow states by this name.
        raise InvalidInputError(f"{MIRROR_PROPOSER!r} names flowtrail's own copies; pick another proposer")
    return proposer


def refuse_projections(options: dict[str, Any]) -> None:
    """The run views are the orchestrator's own inline projection; a caller's own are
    kept with `catch_up` (and rebuilt with ``rebuild(projection=...)``)."""
    if "projections" in options:
        raise InvalidInputError(
            "open() takes no projections: the run views are kept inline; keep a projection "
            "of yours with catch_up(projection), and rebuild it with rebuild(projection=...)"
        )


def checked_max_attempts(attempts: object) -> int:
    """How many attempts a write makes before a ContentionError: a whole number, at least 1."""
    if type(attempts) is not int or attempts < 1:
        raise InvalidInputError(f"max_attempts is a whole number of at least 1, not {shown(attempts)}")
    return attempts


def checked_clock(clock: Clock) -> Clock:
    """A caller's clock, whose readings are checked: every event records them."""
    if not callable(clock):
        raise InvalidInputError(f"clock is a function giving the time, not {shown(clock)}")

    def now() -> datetime:
        reading: object = clock()
        if not isinstance(reading, datetime) or reading.utcoffset() is None:
            raise InvalidInputError(f"the clock gives datetimes with a time zone, not {shown(reading)}")
        return reading

    return now


#: The most events a rebuild reads at once, and views it keeps in memory.
_MOST_BATCH = 1_000_000
_MOST_CACHE = 10_000_000


def _count(name: str, value: object, most: int) -> None:
    if type(value) is not int or not 1 <= value <= most:
        raise InvalidInputError(f"{name} is a whole number from 1 to {most:,}, not {value!r}")


def check_rebuild(batch: object, cache_size: object, progress: object) -> None:
    # Checked before the rebuild drops the views: a progress it cannot call would
    # otherwise fail at its first report, with every query left out of date.
    _count("batch", batch, _MOST_BATCH)
    _count("cache_size", cache_size, _MOST_CACHE)
    if progress is not None and not callable(progress):
        raise InvalidInputError(f"progress is None or a function of (done, total), not {shown(progress)}")


def _storable_name(name: object) -> bool:
    """A text the checkpoints table holds as it is on both backends."""
    if not isinstance(name, str) or not name or "\x00" in name:
        return False
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def _storable_version(version: object) -> bool:
    """A whole number a BIGINT column holds. Anything else is worse than refused: the
    checkpoint is looked up by the version, so one the column rounds (1.5 becomes 2 on
    PostgreSQL) is never found again and every step replays the log from its start."""
    return type(version) is int and 0 <= version < 2**63


def check_catch_up(projection: object, batch: object) -> None:
    # Checked before `prepare`, which drops the tables of a projection whose version
    # differs from its checkpoint's: a bad version must not cost the rows.
    if (
        not all(callable(getattr(projection, method, None)) for method in ("schema", "apply"))
        or not _storable_name(getattr(projection, "name", None))
        or not _storable_version(getattr(projection, "version", None))
    ):
        raise InvalidInputError(
            "catch_up takes a Projection (a name: non-empty text without NUL, a version: "
            f"a whole number from 0 to 2**63 - 1, a schema and apply), not {projection!r}"
        )
    # A new version of the projection drops the tables it names: never the log's.
    wrong = foreign_tables(getattr(projection, "tables", None), frozenset(RunViews.tables))
    if wrong is not None:
        raise InvalidInputError(f"projection {projection.name!r}: {wrong}")  # type: ignore[attr-defined]
    _count("batch", batch, _MOST_BATCH)
