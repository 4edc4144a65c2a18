"""A rebuild holds the write lock a bounded piece of work at a time: other writers (in
other processes, with a busy timeout of 5 s) go on proposing throughout.

Built in one transaction, the ten indexes of a million runs held the lock for about
7 s and a proposer gave up with StoreBusyError; a helper's half of the rows, copied in
one transaction, held it for about 3 s.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from flowtrail import SyncOrchestrator
from flowtrail.core import states as pure
from flowtrail.engine.replay import copy_rows
from flowtrail.projections import RunViews
from flowtrail.store.drivers import run_sync
from flowtrail.store.sqlite import _Connection
from flowtrail.store.sqlite_schema import translate


def transactions(statements: list[str]) -> list[list[str]]:
    """The statements a connection ran, a list per write transaction."""
    found: list[list[str]] = []
    current: list[str] | None = None
    for statement in statements:
        if statement.startswith("BEGIN"):
            current = []
        elif statement in ("COMMIT", "ROLLBACK"):
            if current is not None:
                found.append(current)
            current = None
        elif current is not None:
            current.append(statement)
    return found


def test_a_rebuild_builds_each_index_in_a_transaction_of_its_own(tmp_path: Path) -> None:
    with SyncOrchestrator.open(f"sqlite:///{tmp_path}/log.db") as orch:
        for _ in range(5):
            orch.create_flow_run("etl", state=pure.Pending())
        statements: list[str] = []
        orch.store._writer._connection.set_trace_callback(statements.append)  # type: ignore[attr-defined]
        orch.rebuild(workers=1)
        indexes = [
            [statement for statement in transaction if statement.startswith("CREATE INDEX")]
            for transaction in transactions(statements)
        ]
        assert max(map(len, indexes)) == 1
        assert sum(map(len, indexes)) == len(RunViews().index_schema("sqlite"))
        assert orch.verify().ok


def test_a_helpers_rows_are_copied_a_chunk_at_a_time_and_every_one_arrives(tmp_path: Path) -> None:
    views = RunViews()
    helper = sqlite3.connect(tmp_path / "helper.db", isolation_level=None)
    for statement in views.table_schema("sqlite"):
        helper.execute(statement)
    helper.executemany(
        "INSERT INTO flow_runs (id, name, flow_name, created_at, version, view) VALUES (?, 'r', 'etl', 0, 1, x'00')",
        [(f"run-{index:02d}",) for index in range(25)],
    )
    helper.executemany(
        "INSERT INTO run_tags VALUES ('nightly', ?)", [(f"run-{index:02d}",) for index in range(25)]
    )
    helper.close()
    main = sqlite3.connect(tmp_path / "main.db", isolation_level=None)
    for statement in views.table_schema("sqlite"):
        main.execute(statement)
    statements: list[str] = []
    main.set_trace_callback(statements.append)
    run_sync(
        copy_rows(views.tables, str(tmp_path / "helper.db"), chunk=7), _Connection(main).execute, translate
    )
    copies = [
        transaction for transaction in transactions(statements) if any("flow_runs" in s for s in transaction)
    ]
    assert [len(transaction) for transaction in copies] == [1, 1, 1, 1]
    assert main.execute("SELECT count(*) FROM flow_runs").fetchone() == (25,)
    assert main.execute("SELECT count(*) FROM run_tags").fetchone() == (25,)
    assert main.execute("PRAGMA database_list").fetchall()[-1][1] == "main"  # detached
