"""A script closed unfinished ends without asking for anything more.

A script is closed unfinished when its caller stops in the middle of an effect: Ctrl-C
in a rebuild, a cancelled task. A script that yields after that (a rollback in an
``except BaseException``) makes Python print "generator ignored GeneratorExit" on the
user's terminal; the store ends an unfinished transaction itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from flowtrail.core.effects import Script
from flowtrail.engine.replay import copy_rows
from flowtrail.projections.catchup import catch_up_step
from flowtrail.projections.rebuild import executed, transaction
from flowtrail.projections.runs import RunViews
from flowtrail.store.scripts import record_of
from flowtrail.store.sqlite_schema import SQL

#: Each script, and the replies that take it into the middle of its work.
SCRIPTS: dict[str, tuple[Callable[[], Script[Any]], list[object]]] = {
    "a rebuild's transaction": (lambda: transaction(executed("SELECT 1")), [None]),
    "a catch-up step": (lambda: catch_up_step(RunViews(), SQL.read_batch, record_of), [None]),
    "a helper's rows copied in": (lambda: copy_rows(["flow_runs"], "/nowhere.db"), [None]),
}


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_script_closed_in_the_middle_of_its_work_asks_for_nothing_more(name: str) -> None:
    make, replies = SCRIPTS[name]
    script = make()
    next(script)
    for reply in replies:
        script.send(reply)
    script.close()  # a RuntimeError if it yielded again
    with pytest.raises(StopIteration):
        next(script)
