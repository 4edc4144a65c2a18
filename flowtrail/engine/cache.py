"""The views a process wrote last, kept to save a read per proposal."""

from __future__ import annotations

import threading
from collections import OrderedDict
from uuid import UUID

from flowtrail.core.fold import RunView

__all__ = ["ViewCache"]


class ViewCache:
    """The views this process wrote last, by run id: a hint that saves a read per
    proposal. A stale entry only costs a conflict, after which the view is re-read.

    Used from several threads at once (a SyncOrchestrator shared between threads; an
    async one's attempt decided holding the write lock runs on the database's thread),
    so each call holds a lock: a look-up and the move that follows it, or a check of
    the version and the write, must not interleave with another thread's."""

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._views: OrderedDict[UUID, RunView] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, run_id: UUID) -> RunView | None:
        with self._lock:
            view = self._views.get(run_id)
            if view is not None:
                self._views.move_to_end(run_id)
            return view

    def put(self, view: RunView) -> None:
        with self._lock:
            known = self._views.get(view.id)
            if known is not None and known.version > view.version:
                return  # a concurrent proposal of this process already cached a newer one
            self._views[view.id] = view
            self._views.move_to_end(view.id)
            if len(self._views) > self._size:
                self._views.popitem(last=False)

    def drop(self, run_id: UUID) -> None:
        with self._lock:
            self._views.pop(run_id, None)
