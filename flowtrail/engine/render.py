"""How the CLI shows runs, histories and audit reports in a terminal (rich).

Only `flowtrail.engine.cli` imports this module, so ``import flowtrail`` never loads rich.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import assert_never

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from flowtrail.core.audit import AuditReport
from flowtrail.core.events import (
    FlowRunCreated,
    RunRenamed,
    RunSettingsUpdated,
    SetStateStatus,
    StateProposed,
    TaskRunCreated,
)
from flowtrail.core.fold import RunView
from flowtrail.core.policies import MIRROR_PROPOSER
from flowtrail.core.states import State, StateType
from flowtrail.engine.orchestrator import SyncOrchestrator
from flowtrail.engine.results import HistoryEntry

__all__ = [
    "console",
    "history_table",
    "printable",
    "rebuild_with_progress",
    "report_lines",
    "runs_table",
    "show",
]

#: Colours by state type (used only on a terminal).
_STATE_STYLE = {
    StateType.COMPLETED: "green",
    StateType.FAILED: "red",
    StateType.CRASHED: "bold red",
    StateType.CANCELLED: "dim",
    StateType.CANCELLING: "yellow",
    StateType.RUNNING: "cyan",
    StateType.PENDING: "yellow",
    StateType.SCHEDULED: "blue",
    StateType.PAUSED: "magenta",
}
_STATUS_STYLE = {
    SetStateStatus.ACCEPT: "green",
    SetStateStatus.REJECT: "bold yellow",
    SetStateStatus.WAIT: "blue",
    SetStateStatus.ABORT: "bold red",
}


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """The reader has gone: left to the CLI, which ends every command alike on it
        (rich's own way exits 1, which for flowtrail says that verify found a problem)."""
        self.quiet = True
        raise BrokenPipeError


def console(*, stderr: bool = False) -> Console:
    """A console: colours and the real width on a terminal; plain, wide lines elsewhere
    (so piped output keeps one row per line).

    What it prints comes from the log, which anyone who could write to it filled: no
    string is read as rich markup or emoji codes (a run named ``[bold]x[/bold]`` shows
    as such), and `printable` escapes the control characters in each.
    """
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return _Console(file=stream, stderr=stderr, highlight=False, markup=False, emoji=False)
    width = int(os.environ.get("COLUMNS", "0") or 0) or 200
    return _Console(
        file=stream, width=width, no_color=True, soft_wrap=True, highlight=False, markup=False, emoji=False
    )


def printable(text: str) -> str:
    """``text`` with every character a terminal would act on (escape sequences, NUL,
    line breaks, C1 controls) written out as a Python escape: ``\\x1b``, ``\\x00``."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def when(moment: datetime | None) -> str:
    return "" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def clock(moment: datetime) -> str:
    return moment.strftime("%H:%M:%S.%f")[:-3]


def took(duration: timedelta) -> str:
    seconds = duration.total_seconds()
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def state_text(state: State | None) -> Text:
    if state is None:
        return Text("-", style="dim")
    return Text(printable(state.name or state.type.value.title()), style=_STATE_STYLE.get(state.type, ""))


#: Below these console widths a table drops a column rather than squeeze them all.
_RUNS_COLUMNS = (
    ("id", 0),
    ("name", 0),
    ("flow", 0),
    ("state", 0),
    ("runs", 100),
    ("took", 100),
    ("started (UTC)", 120),
    ("parent task run", 170),
)


def _table(title: str | None, width: int) -> Table:
    """A table that folds long values rather than cut them (every id stays whole)."""
    narrow = width < 120
    return Table(
        title=None if title is None else Text(printable(title)),
        title_justify="left",
        header_style="bold",
        box=box.SIMPLE_HEAD if narrow else box.HEAVY_HEAD,
        pad_edge=not narrow,
    )


def runs_table(runs: Sequence[RunView], *, width: int, title: str | None = None) -> Table:
    """Flow runs, one row each, with the columns that fit in ``width``."""
    table = _table(title, width)
    shown = [name for name, needs in _RUNS_COLUMNS if width >= needs]
    for name in shown:
        table.add_column(name, overflow="fold", no_wrap=name in {"id", "parent task run"})
    for run in runs:
        cells: dict[str, str | Text] = {
            "id": str(run.id),
            "name": printable(run.name),
            "flow": printable(run.flow_name or ""),
            "state": state_text(run.state),
            "runs": str(run.run_count),
            "took": took(run.total_run_time) if run.start_time else "",
            "started (UTC)": when(run.start_time),
            "parent task run": str(run.parent_task_run_id or ""),
        }
        table.add_row(*(cells[name] for name in shown))
    return table


def show(out: Console, table: Table, *, titled: bool = True) -> None:
    """A table on a terminal; elsewhere (a pipe, a file) plain lines, one per row, the
    cells separated by tabs under a line of the column names, for `cut` and `awk` to read
    (preceded by the title as a line of its own where ``titled``)."""
    if out.is_terminal:
        out.print(table)
        return
    # Written to the file itself: rich would expand the tabs into spaces.
    if titled and table.title is not None:
        out.file.write(f"{_plain(table.title)}\n")
    out.file.write("\t".join(_plain(column.header) for column in table.columns) + "\n")
    for row in zip(*(column.cells for column in table.columns), strict=True):
        out.file.write("\t".join(_plain(cell) for cell in row) + "\n")


def _plain(cell: object) -> str:
    """A cell's text; cells hold `printable` text already, so no tab or line break is left."""
    return cell.plain if isinstance(cell, Text) else str(cell)


def _decision_cells(event: StateProposed, current: State | None) -> tuple[Text, Text, State | None]:
    decision = event.decision
    status = Text(decision.status.value, style=_STATUS_STYLE[decision.status])
    if decision.status is SetStateStatus.WAIT and decision.delay_seconds is not None:
        status.append(f" {decision.delay_seconds}s")
    reached = decision.state if decision.state is not None else current
    outcome = state_text(reached)
    if decision.state is None:
        outcome = Text("unchanged: ", style="dim") + outcome
    return status, outcome, reached


def history_table(entries: Iterable[HistoryEntry], *, width: int, title: str | None = None) -> Table:
    """A run's audit timeline: every event, every proposal with the decision on it."""
    table = _table(title, width)
    for column in ("pos", "recorded (UTC)", "proposed", "decision", "state after", "rule", "reason"):
        table.add_column(column, no_wrap=column in {"pos", "recorded (UTC)"}, overflow="fold")
    current: State | None = None
    for entry in entries:
        cells: tuple[Text | str, ...]
        event = entry.event
        match event:
            case StateProposed():
                status, outcome, current = _decision_cells(event, current)
                proposed = state_text(event.proposal.state)
                if event.proposal.proposer == MIRROR_PROPOSER:
                    proposed.append(" (copied from its subflow)", style="dim")
                elif event.proposal.force:
                    proposed.append(" (forced)", style="dim")
                decision = event.decision
                cells = (
                    proposed,
                    status,
                    outcome,
                    printable(decision.rule or ""),
                    printable(decision.reason or ""),
                )
            case FlowRunCreated() | TaskRunCreated():
                what = "flow run" if isinstance(event, FlowRunCreated) else "task run"
                cells = (Text(f"{what} created", style="dim"), "", "", "", f"named {event.name!r}")
            case RunRenamed():
                cells = (Text("renamed", style="dim"), "", "", "", f"to {event.name!r}")
            case RunSettingsUpdated():
                cells = (Text("settings updated", style="dim"), "", "", "", "")
            case _:
                assert_never(event)
        table.add_row(str(entry.position), clock(entry.recorded_at), *cells)
    return table


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def report_lines(report: AuditReport, *, shown: int = 10) -> list[Text]:
    """An audit report in words: one line when the log is sound, else its problems."""
    checked = f"{_count(report.events_checked, 'event')} in {_count(report.streams_checked, 'run')}"
    if report.ok:
        lines = [
            Text.assemble(
                ("verified ", "bold green"),
                f"{checked}: every hash chain is intact and every recorded decision is the one "
                "its policy makes again",
            )
        ]
        if report.log_digest is not None and report.last_position:
            lines.append(
                Text(
                    f"log digest at position {report.last_position}: {report.log_digest} "
                    f"(kept elsewhere, `verify --anchor {report.last_position}:<digest>` shows "
                    "any later change to the events up to it)",
                    style="dim",
                )
            )
        return [*lines, *_source(report)]
    lines = [
        Text.assemble(
            ("verification failed ", "bold red"),
            f"after {checked}: {'at least ' if report.truncated else ''}{_count(len(report.problems), 'problem')}. "
            f"The first: {printable(report.problems[0].message)}",
        )
    ]
    lines += [Text(f"  - {printable(problem.message)}") for problem in report.problems[1:shown]]
    if len(report.problems) > shown:
        lines.append(Text(f"  ... and {len(report.problems) - shown} more", style="dim"))
    return [*lines, *_source(report)]


def _source(report: AuditReport) -> list[Text]:
    """Which log an export says it was taken from (its header is not sealed: a claim)."""
    if report.export_of is None:
        return []
    return [Text(f"the export says it was taken from the log with id {report.export_of}", style="dim")]


def rebuild_with_progress(
    orchestrator: SyncOrchestrator, out: Console, *, workers: int | None = None
) -> tuple[int, float]:
    """Rebuild, with a progress bar when ``out`` is a terminal; returns (events, seconds)."""
    columns = (
        TextColumn("rebuilding"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("events"),
        TimeRemainingColumn(),
    )
    started = time.perf_counter()
    with Progress(*columns, console=out, disable=not out.is_terminal) as bar:
        task = bar.add_task("rebuild", total=orchestrator.last_position() or 1)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=max(total, 1))

        applied = orchestrator.rebuild(advance, workers=workers)
        bar.update(task, completed=bar.tasks[0].total)
    return applied, time.perf_counter() - started
