"""Rebuilding the run views from the log, online, in bounded memory.

A rebuild drops the views' tables, marks them stale, replays the log into them a chunk
at a time, and ends with one write transaction that replays what was appended
meanwhile and marks the views current. A chunk is decoded and folded outside any
transaction; the views it changed are written a few thousand at a time, each batch in a
short write transaction of its own. Appends go on throughout:
their inline updates are version-guarded (see `flowtrail.projections.runs`), so an
update racing the rebuild either applies in turn or is skipped and replayed by it; the
last transaction holds the write lock, so nothing slips between its catch-up and the
mark. A crash leaves the views marked stale, and the next rebuild starts over.

Views are cached (least recently used first out, at most ``cache_size``) so that each
run's row is written about once however many events it has.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence

from flowtrail.core.chain import RecordedEvent
from flowtrail.core.effects import Begin, Commit, Execute, Fetch, Rollback, Row, Script
from flowtrail.core.errors import RebuildReplacedError
from flowtrail.core.events import FlowRunCreated, TaskRunCreated
from flowtrail.core.fold import RunView, evolve
from flowtrail.core.projection import Dialect
from flowtrail.projections.runs import RunViews, load_views, write_views

__all__ = ["RunViewsRebuild", "executed", "last_seen", "transaction"]

_SET_REBUILD = (
    "INSERT INTO flowtrail_meta (key, value) VALUES (?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)

_CREATION_TYPES = frozenset({FlowRunCreated.__struct_config__.tag, TaskRunCreated.__struct_config__.tag})

#: Events decoded and folded together (see `RunViewsRebuild._apply`).
_SLICE = 256

#: Turns a log row into a recorded event (the store's row mapping).
RecordOf = Callable[[Row], RecordedEvent]


def transaction(body: Script[object]) -> Script[object]:
    """Run ``body`` inside one write transaction, rolled back if it fails."""
    yield Begin()
    try:
        result = yield from body
    except GeneratorExit:
        raise  # closed unfinished (its caller stopped): the store ends the transaction itself
    except BaseException:
        yield Rollback()
        raise
    yield Commit()
    return result


def executed(sql: str, params: Sequence[object] = ()) -> Script[None]:
    """A script of one statement."""
    yield Execute(sql, params)


def last_seen(projection: RunViews) -> Script[str | None]:
    """The signs of life a rebuild of the projection wrote last, or None if none did."""
    rows: list[Row] = yield Fetch(
        "SELECT value FROM flowtrail_meta WHERE key = ?", (f"rebuild:{projection.name}:seen",)
    )
    return str(rows[0][0]) if rows else None


class RunViewsRebuild:
    """One rebuild of the run views; drive it with `reset`, `feed` and `finish`."""

    def __init__(
        self,
        projection: RunViews | None = None,
        *,
        cache_size: int = 20_000,
        flush_every: int = 2_000,
        token: str | None = None,
        signs: Callable[[], str] | None = None,
    ) -> None:
        self.projection = projection or RunViews()
        #: Names this rebuild in the log (see `reset`); None: the tables are its own
        #: (a snapshot in memory), no other rebuild can replace it.
        self.token = token
        #: Signs of life (when, where), written beside the token with each of this
        #: rebuild's writes, so that others can tell it is running (`last_seen`).
        self.signs = signs
        self.cache_size = cache_size
        self.flush_every = flush_every
        self.applied = 0
        #: Events of runs whose creation is not in the log (damage `verify` names): no
        #: view holds them.
        self.orphaned = 0
        self.position = 0
        self._views: OrderedDict[str, RunView] = OrderedDict()
        self._dirty: dict[str, RunView] = {}
        self._created: list[tuple[str, RunView]] = []
        #: The dialect of the tables written (see `reset`), whose indexes `finish` makes.
        self.dialect: Dialect = "sqlite"

    def reset(self, dialect: Dialect, mark_stale: Script[None], last_position: str) -> Script[object]:
        """Drop and recreate the tables, marked stale, in one transaction; its result is
        the log's last position then (every event up to it was appended before the drop).
        """
        self.dialect = dialect

        def body() -> Script[int]:
            for table in self.projection.tables:
                yield Execute(f'DROP TABLE IF EXISTS "{table}"')
            # Rows load faster into tables without indexes; finish() builds them at once.
            for statement in self.projection.table_schema(dialect):
                yield Execute(statement)
            yield from mark_stale
            if self.token is not None:
                yield Execute(_SET_REBUILD, (self._key, self.token))
                yield from self._alive()
            rows: list[Row] = yield Fetch(last_position)
            return int(rows[0][0] or 0)

        return transaction(body())

    @property
    def _key(self) -> str:
        return f"rebuild:{self.projection.name}"

    def still_running(self) -> Script[None]:
        """In a write transaction before any of this rebuild's writes: raise
        `RebuildReplacedError` if another rebuild has dropped the tables since this one
        did. Two rebuilds writing at once would leave the views of the one that began
        first, marked current by it, with only part of the runs of the other's tables."""
        if self.token is None:
            return
        rows: list[Row] = yield Fetch("SELECT value FROM flowtrail_meta WHERE key = ?", (self._key,))
        if not rows or rows[0][0] != self.token:
            raise RebuildReplacedError(
                "another rebuild of the run views began while this one ran, and replaces it: this "
                "one has stopped writing them"
            )
        yield from self._alive()

    def _gone(self) -> Script[None]:
        if self.token is not None:
            yield Execute("DELETE FROM flowtrail_meta WHERE key IN (?, ?)", (self._key, f"{self._key}:seen"))

    def _alive(self) -> Script[None]:
        if self.signs is not None:
            yield Execute(_SET_REBUILD, (f"{self._key}:seen", self.signs()))

    def feed(self, records: Sequence[RecordedEvent]) -> Script[None]:
        """Apply a chunk of the log (in position order). The views it changes are
        written in a transaction of their own once enough of them wait: the write lock
        is held while rows are written, not while events are decoded and folded."""
        yield from self._apply(records)
        if len(self._dirty) >= self.flush_every:
            yield from transaction(self.guarded(self._flush(everything=False)))

    def guarded(self, writes: Script[None]) -> Script[None]:
        """``writes``, after `still_running` (in the caller's transaction)."""
        yield from self.still_running()
        yield from writes

    def index_builds(self) -> Iterator[Script[object]]:
        """The tables' indexes, built after their rows are in: a transaction each, so
        that other writers wait for one index at a time (about 0.7 s for 1M runs), not
        for all of them in `finish`'s transaction, past their busy timeout."""
        for statement in self.projection.index_schema(self.dialect):
            yield transaction(self.guarded(executed(statement)))

    def finish(
        self, read_batch: str, record_of: RecordOf, mark_current: Script[None], batch: int = 5_000
    ) -> Script[object]:
        """Replay what was appended since the last chunk, write every view, mark current.

        One transaction: it holds the write lock, so no append can slip in between. The
        tables' indexes are built before it (`index_builds`).
        """

        def body() -> Script[None]:
            yield from self.still_running()
            while True:
                rows: list[Row] = yield Fetch(read_batch, (self.position + 1, batch))
                yield from self._apply([record_of(row) for row in rows])
                if len(self._dirty) >= self.flush_every:
                    yield from self._flush(everything=False)
                if len(rows) < batch:
                    break
            yield from self._flush(everything=True)
            yield from mark_current
            yield from self._gone()

        return transaction(body())

    def flush(self) -> Script[None]:
        """Write every view still unwritten (in the caller's transaction)."""
        yield from self._flush(everything=True)

    def flush_all(self) -> Script[None]:
        """Write every view still unwritten and index the tables (when the caller fed
        the whole log itself)."""
        yield from self.flush()
        for statement in self.projection.index_schema(self.dialect):
            yield Execute(statement)

    def _apply(self, records: Sequence[RecordedEvent]) -> Script[None]:
        if not records:
            return
        views, dirty = self._views, self._dirty
        # A view evicted from the cache but not yet written is still in ``dirty``: its
        # table row is behind, so it must never be reloaded from the table. A run created
        # in this chunk is folded here from its creation, row or no row (an append may
        # have written one meanwhile: it is written over, and the events after this
        # chunk are replayed later): looking up most of a log's runs for nothing took a
        # sixth of a rebuild's reads.
        created = {r.stream_id for r in records if r.event_type in _CREATION_TYPES}
        missing = [
            r.stream_id
            for r in records
            if r.stream_id not in views and r.stream_id not in dirty and r.stream_id not in created
        ]
        if missing:
            views.update((yield from load_views(list(dict.fromkeys(missing)))))
        # Decoded and folded a slice at a time: the events of a whole chunk, decoded
        # first, would be out of the processor's cache by the time they are folded (a
        # third of the replay's time with chunks of 5,000).
        for start in range(0, len(records), _SLICE):
            self._fold(records[start : start + _SLICE])
        self.position = records[-1].position
        while len(views) > self.cache_size:
            views.popitem(last=False)  # its newest state is still in dirty until written

    def _fold(self, records: Sequence[RecordedEvent]) -> None:
        views, dirty = self._views, self._dirty
        events = [record.decode() for record in records]
        for record, event in zip(records, events, strict=True):
            run_id = record.stream_id
            view = views.pop(run_id, None) or dirty.get(run_id)
            if view is None:
                if not isinstance(event, FlowRunCreated | TaskRunCreated):
                    self.orphaned += 1
                    continue
            elif record.version != view.version + 1:
                # Not its turn: an append already applied it to the stored row. Write the
                # row again all the same, whole: an append that brought its view along
                # wrote only the indexed columns its fold changed, trusting the row it
                # updated to hold the others, which an older row written by this rebuild
                # may not.
                views[run_id] = dirty[run_id] = view
                continue
            view = evolve(view, event)
            views[run_id] = dirty[run_id] = view  # re-inserted: now the most recently used
            if isinstance(event, FlowRunCreated):
                self._created.append((run_id, view))
            self.applied += 1

    def _flush(self, *, everything: bool) -> Script[None]:
        if self._dirty or self._created:
            yield from write_views(self._dirty.items(), self._created)
        self._dirty = {}
        self._created = []
        if everything:
            self._views.clear()
