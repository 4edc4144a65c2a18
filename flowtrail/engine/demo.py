"""The demo pipeline: a night of a small ETL, run by the engine on a real log.

``nightly-etl`` starts four subflows: ``extract`` fails once and succeeds on its retry
(after a one-second retry delay the policy makes it wait out), ``build-report`` runs
past its timeout, ``publish`` fails and its failure hook pages someone, ``load``
completes. The parent completes. Then two late proposals reach the finished parent: a
worker that tries to start it again (rejected by the policy) and a watchdog that marks
it crashed (aborted by the policy). Every one of those proposals is in the log.

`run_pipeline` only uses the library; `show_demo` (for ``flowtrail demo``) runs it on a
fresh log and shows the runs, two audit timelines, the verification and a rebuild.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sqlite3
import sys
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from rich.text import Text

from flowtrail import states
from flowtrail.core.errors import CorruptLogError, InvalidInputError
from flowtrail.core.fold import RunView
from flowtrail.core.states import State
from flowtrail.engine.flows import Flow, flow
from flowtrail.engine.orchestrator import SyncOrchestrator
from flowtrail.engine.render import (
    console,
    history_table,
    rebuild_with_progress,
    report_lines,
    runs_table,
    show,
)
from flowtrail.engine.results import OrchestrationResult
from flowtrail.store.urls import sqlite_url

__all__ = ["DemoRun", "run_pipeline", "show_demo"]


@dataclass
class DemoRun:
    """What the demo did: the runs worth a closer look and what happened on the side."""

    parent_id: UUID
    flaky_id: UUID
    late_proposals: list[tuple[str, OrchestrationResult]] = field(default_factory=list)
    pages: list[str] = field(default_factory=list)


def _pipeline(pages: list[str]) -> Flow[[str], dict[str, Any]]:
    calls = {"extract": 0}

    @flow(name="extract", retries=2, retry_delay_seconds=1)
    def extract(source: str) -> int:
        calls["extract"] += 1
        if calls["extract"] == 1:
            raise ConnectionError(f"{source} closed the connection mid-read")
        return 1_250

    @flow(name="build-report", timeout_seconds=0.3)
    def build_report(rows: int) -> str:
        time.sleep(5)  # a query that hangs: the timeout stops it
        return f"{rows} rows"

    def page_on_call(flow: Flow[Any, Any], run: RunView, state: State) -> None:
        pages.append(f"paged on-call: {run.name} ended {state.name}: {state.message}")

    @flow(name="publish", on_failure=[page_on_call])
    def publish(rows: int) -> None:
        raise PermissionError(f"the warehouse refused {rows} rows: read-only until 06:00")

    @flow(name="load")
    def load(rows: int) -> int:
        return rows

    @flow(name="nightly-etl", flow_run_name="nightly-etl-{day}")
    def nightly_etl(day: str) -> dict[str, Any]:
        rows = extract("orders-db")
        report = build_report(rows, return_state=True)
        published = publish(rows, return_state=True)
        loaded = load(rows)
        return {"day": day, "rows": loaded, "report": report.name, "publish": published.name}

    return nightly_etl


def run_pipeline(url: str, *, day: str = "2026-11-23") -> DemoRun:
    """Run the pipeline on the log at ``url``, then send the finished parent two late
    proposals."""
    pages: list[str] = []
    nightly_etl = _pipeline(pages)
    with SyncOrchestrator.open(url) as orchestrator:
        final = nightly_etl(day, return_state=True)
        parent_id = final.state_details.flow_run_id
        assert parent_id is not None
        extract_run = orchestrator.read_flow_runs(flow_names=["extract"], parent_task_run_ids=None, limit=1)[
            0
        ]
        demo = DemoRun(parent_id=parent_id, flaky_id=extract_run.id, pages=pages)
        late = [
            ("a second worker tries to start it again", states.Running()),
            ("a watchdog that lost track of it marks it crashed", states.Crashed(message="no heartbeat")),
        ]
        for what, state in late:
            demo.late_proposals.append((what, orchestrator.propose_state(parent_id, state)))
    return demo


# -- showing it ---------------------------------------------------------------------------------


#: How the demo marks the logs it makes, so that --replace removes no other log.
_DEMO = "flowtrail demo"
_MADE_BY_READ = "SELECT value FROM flowtrail_meta WHERE key = 'made_by'"
_MADE_BY_WRITE = "INSERT INTO flowtrail_meta (key, value) VALUES ('made_by', ?)"


def _mark(path: Path) -> None:
    with closing(sqlite3.connect(path)) as connection, connection:
        connection.execute(_MADE_BY_WRITE, (_DEMO,))


def _looks_like_a_demo(connection: sqlite3.Connection) -> bool:
    """A demo log made before the demo marked its logs: a few dozen events, every flow
    run one of the demo's flows."""
    events = connection.execute("SELECT count(*) FROM events").fetchone()[0]
    flows = {row[0] for row in connection.execute("SELECT DISTINCT flow_name FROM flow_runs")}
    return events <= _DEMO_EVENTS and bool(flows) and flows <= _DEMO_FLOWS


_DEMO_EVENTS = 200
_DEMO_FLOWS = frozenset({"nightly-etl", "extract", "build-report", "publish", "load"})


def _fresh(path: Path, *, replace: bool) -> None:
    """Make room for the demo's log at ``path``: only ever removes a flowtrail database."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        return
    if not replace:
        raise InvalidInputError(
            f"{path} already exists: pass --replace to start the demo over, or --path elsewhere"
        )
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as connection:
            tables = {
                row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            made_by = connection.execute(_MADE_BY_READ).fetchall() if "flowtrail_meta" in tables else []
            demo_made = made_by == [(_DEMO,)] or (not made_by and _looks_like_a_demo(connection))
    except sqlite3.Error:
        tables, demo_made = set(), False
    if "flowtrail_meta" not in tables:
        raise InvalidInputError(f"{path} is not a flowtrail database: the demo will not replace it")
    if not demo_made:
        raise InvalidInputError(
            f"{path} is a flowtrail log the demo did not make: the demo replaces only its own logs"
        )
    for leftover in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        leftover.unlink(missing_ok=True)


def _program() -> str:
    """How to call ``flowtrail`` again from here."""
    if shutil.which("flowtrail"):
        return "flowtrail"
    relative = os.path.relpath(sys.argv[0])
    return relative if not relative.startswith("..") else os.path.abspath(sys.argv[0])


def _all_views(orchestrator: SyncOrchestrator) -> list[RunView]:
    flow_runs = orchestrator.read_flow_runs(limit=None)
    return flow_runs + [task for run in flow_runs for task in orchestrator.read_task_runs(run.id)]


def show_demo(path: Path, *, replace: bool) -> None:
    """Run the pipeline into a fresh log at ``path`` and show what the log holds."""
    _fresh(path, replace=replace)
    url = sqlite_url(path)
    out = console()
    out.print(
        Text.assemble(("flowtrail demo", "bold"), f": one night of an ETL pipeline, recorded in {path}\n")
    )
    with out.status("running nightly-etl and its subflows ..."):
        run = run_pipeline(url)
    _mark(path)
    with SyncOrchestrator.open(url) as orchestrator:
        show(out, runs_table(orchestrator.read_flow_runs(limit=None), title="The runs", width=out.width))
        for page in run.pages:
            out.print(Text(f"failure hook of publish: {page}", style="yellow"))
        for what, result in run.late_proposals:
            out.print(
                f"Then {what}: {result.status.value} by {result.details.rule} ({result.details.reason})"
            )
        for run_id, why in (
            (run.flaky_id, "failed, waited out its retry delay, completed"),
            (run.parent_id, ""),
        ):
            view = orchestrator.read_flow_run(run_id)
            title = f"Audit timeline of {view.name} ({view.flow_name}){f': {why}' if why else ''}"
            out.print()
            show(out, history_table(orchestrator.read_history(run_id), title=title, width=out.width))
        report = orchestrator.verify()
        out.print()
        for line in report_lines(report):
            out.print(line)
        before = _all_views(orchestrator)
        out.print(f"\nDropping the read views ({len(before)} runs) and rebuilding them from the log:")
        applied, seconds = rebuild_with_progress(orchestrator, out)
        after = _all_views(orchestrator)
    if after != before:
        raise CorruptLogError("the rebuilt views differ from the ones kept as events were appended")
    out.print(
        f"Rebuilt from {applied} events in {seconds * 1000:.0f} ms: all {len(after)} run views are identical "
        "to the ones kept as the events were appended."
    )
    program = _program()
    out.print(f"\nThe log stays at {path}. Look around:")
    for command in ("runs", f"history {run.parent_id}", "verify", "export --all -o demo-export.jsonl"):
        out.print(f"  {shlex.quote(program)} --database {shlex.quote(url)} {command}", soft_wrap=True)
