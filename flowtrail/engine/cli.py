"""The ``flowtrail`` command: look at runs, audit the log, rebuild views, export, demo.

Every command reads ``--database URL`` (or ``FLOWTRAIL_DATABASE_URL``, else the
embedded default the engine writes to). Errors a user can cause print one sentence
and exit 2; ``verify`` exits 1 when it finds a problem. Output is a table on a terminal
(colours only there) and ``--json`` where a program reads it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import signal
import stat
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import IO, Any, NoReturn, TypeVar

import click
import msgspec
import structlog

from flowtrail.core.audit import AuditReport
from flowtrail.core.errors import (
    CodecError,
    FlowtrailError,
    LogNotFoundError,
    RunNotFoundError,
    StoreAccessError,
)
from flowtrail.core.fold import RunView
from flowtrail.core.states import StateType
from flowtrail.core.text import shown
from flowtrail.engine.context import default_url
from flowtrail.engine.demo import show_demo
from flowtrail.engine.exports import bounded_lines, verify_export
from flowtrail.engine.orchestrator import SyncOrchestrator
from flowtrail.engine.render import (
    console,
    history_table,
    printable,
    rebuild_with_progress,
    report_lines,
    runs_table,
    show,
    took,
)
from flowtrail.engine.replay import MOST_WORKERS
from flowtrail.engine.snapshot import RunSnapshot
from flowtrail.projections.queries import MAX_LIMIT, FlowRunSort
from flowtrail.store.schema import SCHEMA_VERSION
from flowtrail.store.sqlite_schema import is_memory
from flowtrail.store.urls import parse_url, shown_url, sqlite_url

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])

#: Where `flowtrail demo` leaves its log by default (beside the caller), and its URL.
DEMO_FILE = "flowtrail-demo.db"
DEMO_URL = sqlite_url(DEMO_FILE)

#: Exit status of an error the user can fix (click's usage errors use it too).
USER_ERROR = 2


class UserError(click.ClickException):
    """A sentence for the user, no traceback."""

    exit_code = USER_ERROR

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"flowtrail: {printable(self.format_message())}", err=True)


class NoneFoundError(UserError):
    """The answer is none: not a mistake of the user's, so not `USER_ERROR`; 1, as grep
    exits when nothing matched."""

    exit_code = 1


#: How a command ends when the reader of its output has gone (`flowtrail export --all |
#: head`): silently, with the status a shell reports for any Unix tool a closed pipe
#: stops (128 + SIGPIPE). Not 0, since the output was cut short (``set -o pipefail``
#: should see it), and not 1 or 2, which say that verify found a problem or that the
#: input was wrong.
PIPE_CLOSED = 128 + signal.SIGPIPE


class ReaderGoneError(Exception):
    """The reader of standard output has gone (a closed pipe)."""


#: How a command ends when Ctrl-C stops it: as a shell reports any tool SIGINT stops
#: (128 + SIGINT), not 1, which says that verify found a problem.
INTERRUPTED = 128 + signal.SIGINT


class InterruptError(click.ClickException):
    """Ctrl-C: a new line, so that the shell's prompt starts on one, and no more."""

    exit_code = INTERRUPTED

    def __init__(self) -> None:
        super().__init__("interrupted")

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(err=True)


class _Group(click.Group):
    """Turns flowtrail's own errors, and the OS's, into one sentence."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except BrokenPipeError as exc:  # --help or --version into a closed pipe
            raise ReaderGoneError from exc

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FlowtrailError as exc:
            raise UserError(_sentence(exc)) from exc
        except BrokenPipeError as exc:
            raise ReaderGoneError from exc  # past click, which would exit 1 (see `main`)
        except KeyboardInterrupt as exc:
            raise InterruptError from exc  # click would print "Aborted!" and exit 1
        except OSError as exc:
            raise UserError(f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}") from exc


def _sentence(exc: FlowtrailError) -> str:
    """The error as a sentence: capitalised where it starts with a plain word, and left
    alone where it starts with a name (a file, an option) that must read as given."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, CodecError) and exc.position is not None and f"position {exc.position}" not in text:
        text = f"the event at position {exc.position} is damaged: {text}"
    first = text.split(" ", 1)[0]
    return text[0].upper() + text[1:] if first.isalpha() and first.islower() else text


@dataclass
class Settings:
    database: str | None
    verbose: bool

    @property
    def url(self) -> str:
        return self.database if self.database is not None else default_url()


def _quiet_logs(verbose: bool) -> None:
    level = logging.INFO if verbose else logging.CRITICAL
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--database",
    metavar="URL",
    envvar="FLOWTRAIL_DATABASE_URL",
    show_envvar=True,
    help="The log: sqlite:///path.db or postgresql://... [default: ~/.flowtrail/flowtrail.db]",
)
@click.option("-v", "--verbose", is_flag=True, help="Show the engine's log lines on stderr.")
@click.version_option(package_name="flowtrail")
@click.pass_context
def cli(ctx: click.Context, database: str | None, verbose: bool) -> None:
    """flowtrail: Prefect's flow-run orchestration over an append-only, hash-chained log.

    Look at runs (runs, history, subflow, as-of), audit the log (verify, export),
    recover its read views (rebuild), or see it all at work (demo).
    """
    _quiet_logs(verbose)
    if database is not None and not database.strip():
        given = ctx.get_parameter_source("database") is click.core.ParameterSource.ENVIRONMENT
        raise UserError(f"{'FLOWTRAIL_DATABASE_URL' if given else '--database'} is set but empty")
    ctx.obj = Settings(database=database, verbose=verbose)


@contextmanager
def opened(settings: Settings, *, write: bool = False) -> Iterator[SyncOrchestrator]:
    """The orchestrator on an existing log (a missing SQLite file is an error, not a new log).

    A command that only reads opens a SQLite log this process may not write (an
    auditor's copy in a read-only folder) read-only."""
    url = settings.url
    target = parse_url(url)
    if target.backend == "sqlite" and target.target != ":memory:" and not Path(target.target).exists():
        raise UserError(f"There is no flowtrail database at {target.target}: {_missing_hint(settings)}")
    try:
        try:
            orchestrator = SyncOrchestrator.open(url, create=False)
        except StoreAccessError:
            if write or target.backend != "sqlite":
                raise
            orchestrator = SyncOrchestrator.open(url, create=False, read_only=True)
    except LogNotFoundError:
        raise UserError(
            f"There is no flowtrail log at {shown_url(url)}: run a flow or `flowtrail migrate` first"
        ) from None
    with orchestrator:
        yield orchestrator


def _missing_hint(settings: Settings) -> str:
    """What to do about a missing log: the default one is made by the first flow run,
    and the demo writes its own file, not the default log."""
    if settings.database is None:
        return (
            f"a flow run creates it; or name another log with --database (the demo's, "
            f"from this folder: --database {DEMO_URL})"
        )
    return "name an existing log, or create an empty one there with `flowtrail migrate`"


def _whole(value: object) -> object:
    """``value`` with every field of every record in it, defaults too (a run's views are
    stored without them): each record of a kind has the same keys as the next."""
    if isinstance(value, msgspec.Struct):
        config = value.__struct_config__
        fields: dict[str, object] = {} if config.tag_field is None else {config.tag_field: config.tag}
        for name, key in zip(value.__struct_fields__, value.__struct_encode_fields__, strict=True):
            item = getattr(value, name)
            if item is not msgspec.UNSET:
                fields[key] = _whole(item)
        return fields
    if isinstance(value, list | tuple):
        return [_whole(item) for item in value]
    if isinstance(value, dict):
        return {key: _whole(item) for key, item in value.items()}
    return value


def _emit_json(value: object) -> None:
    """``value`` as JSON in UTF-8, whatever the terminal's encoding (JSON read by another
    program is UTF-8), or as text where standard output takes no bytes."""
    text = msgspec.json.format(msgspec.json.encode(_whole(value))) + b"\n"
    binary = getattr(sys.stdout, "buffer", None)
    if binary is None:
        sys.stdout.write(text.decode())
        return
    sys.stdout.flush()
    binary.write(text)
    binary.flush()


def _view(orchestrator: SyncOrchestrator | RunSnapshot, run_id: str) -> RunView:
    try:
        return orchestrator.read_flow_run(run_id)
    except RunNotFoundError:
        return orchestrator.read_task_run(run_id)


# -- runs --------------------------------------------------------------------------------------


def run_filters(command: F) -> F:
    """The options of `runs` and `as-of POSITION runs`."""
    options = [
        click.option(
            "--state",
            "state_types",
            multiple=True,
            type=click.Choice([t.value for t in StateType], case_sensitive=False),
            help="A state type.",
        ),
        click.option(
            "--state-name", "state_names", multiple=True, help="A state name (TimedOut, AwaitingRetry)."
        ),
        click.option("--flow", "flow_names", multiple=True, help="A flow name."),
        click.option("--tag", "tags", multiple=True, help="A tag (runs carrying every one given)."),
        click.option("--parent-task-run", "parent_task_run_ids", multiple=True, help="A parent task run id."),
        click.option("--limit", type=click.IntRange(1, MAX_LIMIT), default=50, show_default=True),
        click.option(
            "--sort",
            type=click.Choice([sort.value for sort in FlowRunSort], case_sensitive=False),
            default=FlowRunSort.ID_DESC.value.lower(),  # as --help shows the choices
            show_default=True,
        ),
        click.option("--json", "as_json", is_flag=True, help="Print the runs' views as JSON."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _show_runs(source: SyncOrchestrator | RunSnapshot, title: str, **filters: Any) -> None:
    as_json = filters.pop("as_json")
    # Options given as several values are "any of" (tags: "all of"); kinds of option combine with "and".
    query: dict[str, Any] = {
        name: (value or None) if isinstance(value, tuple) else value for name, value in filters.items()
    }
    runs = source.read_flow_runs(**query)
    if as_json:
        _emit_json(runs)
        return
    out = console()
    if not runs:
        out.print("No flow runs match.")
        return
    show(out, runs_table(runs, title=title, width=out.width), titled=False)


@cli.command()
@run_filters
@click.pass_obj
def runs(settings: Settings, /, **filters: Any) -> None:
    """Flow runs, newest first, with their current states."""
    with opened(settings) as orchestrator:
        _show_runs(orchestrator, "Flow runs", **filters)


@cli.group("as-of")
@click.argument("position", type=click.IntRange(min=0))
def as_of(position: int) -> None:
    """The read views as they were when the log ended at POSITION.

    A POSITION inside a transaction (a subflow's state and its copy; appends committed
    together) gives them at the transaction's end, as no reader ever saw them between.
    """


@as_of.command("runs")
@run_filters
@click.pass_context
def as_of_runs(ctx: click.Context, /, **filters: Any) -> None:
    """Flow runs as they stood at the position."""
    position: int = ctx.parent.params["position"] if ctx.parent else 0
    with opened(ctx.obj) as orchestrator:
        last = orchestrator.last_position()
        if position > last:
            raise UserError(f"Position {position} is past the end of the log, which ends at {last}")
        with orchestrator.as_of(position) as snapshot:
            _show_runs(snapshot, f"Flow runs as of position {snapshot.position} (of {last})", **filters)


# -- one run ----------------------------------------------------------------------------------


@cli.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print every event as JSON.")
@click.pass_obj
def history(settings: Settings, run_id: str, as_json: bool) -> None:
    """A run's audit timeline: every proposal, the decision on it, the rule and the reason."""
    with opened(settings) as orchestrator:
        view = _view(orchestrator, run_id)
        entries = orchestrator.read_history(view.id)
    if as_json:
        _emit_json(entries)
        return
    what = f"flow run of {view.flow_name}" if view.flow_name else f"task run {view.task_key}"
    state = view.state.name if view.state else "no state"
    out = console()
    show(
        out, history_table(entries, title=f"{view.name}: {what}, now {state}", width=out.width), titled=False
    )


@cli.command()
@click.argument("parent_task_run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the run's view as JSON.")
@click.pass_obj
def subflow(settings: Settings, parent_task_run_id: str, as_json: bool) -> None:
    """The flow run a parent task run started (the most recent one)."""
    with opened(settings) as orchestrator:
        try:
            task = orchestrator.read_task_run(parent_task_run_id)
        except RunNotFoundError:
            flow = _flow_run_or_none(orchestrator, parent_task_run_id)
            if flow is None:
                raise
            raise UserError(
                f"{flow.id} is a flow run ({flow.name}); subflow takes the id of the task run "
                "that started a flow run, as listed under 'parent task run'"
            ) from None
        found = orchestrator.find_subflow_run(task.id)
    if found is None:
        if as_json:
            click.echo("null")
        raise NoneFoundError(f"Task run {task.id} ({task.name}) started no flow run")
    if as_json:
        _emit_json(found)
    else:
        out = console()
        title = f"The subflow run of task run {task.name}"
        show(out, runs_table([found], title=title, width=out.width), titled=False)


def _flow_run_or_none(orchestrator: SyncOrchestrator, run_id: str) -> RunView | None:
    try:
        return orchestrator.read_flow_run(run_id)
    except RunNotFoundError:
        return None


# -- audit and recovery ------------------------------------------------------------------------


def _report(report: AuditReport, as_json: bool) -> NoReturn:
    if as_json:
        _emit_json({"ok": report.ok, **msgspec.structs.asdict(report)})
    else:
        out = console()
        for line in report_lines(report):
            out.print(line)
    sys.exit(0 if report.ok else 1)


@cli.command()
@click.option("--run", "run_id", metavar="RUN_ID", help="Verify one run and the runs around it.")
@click.option(
    "--file",
    "export_file",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Verify an export (no database needed); - reads standard input.",
)
@click.option(
    "--anchor",
    metavar="POSITION:DIGEST",
    help="A log digest kept from an earlier verify (or an export's end line): the log must "
    "still hold every event up to POSITION unchanged.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def verify(
    settings: Settings, run_id: str | None, export_file: str | None, anchor: str | None, as_json: bool
) -> None:
    """Re-check the log: hash chains, positions, every decision re-decided, and the
    stored views against the runs' events.

    Exits 0 when the log is sound and 1 when it is not, naming the first problem. A
    check of the whole log prints its digest: kept elsewhere, it is the --anchor that
    shows any later change to the events up to it.
    """
    anchored = None if anchor is None else _anchor(anchor)
    if export_file is not None:
        if run_id is not None or anchored is not None:
            raise UserError(
                "--run and --anchor do not go with --file: an export is verified whole, against its end line"
            )
        with click.open_file(export_file, "rb") as binary:
            report = verify_export(bounded_lines(binary))
        _report(report, as_json)
    with opened(settings) as orchestrator:
        report = orchestrator.verify(run_id, anchor=anchored)
    _report(report, as_json)


#: An anchor as `verify` prints it: a position (digits 0-9 only: ``isdigit`` takes "²"
#: too), a colon, the log digest's 64 hexadecimal digits and nothing else.
_ANCHOR = re.compile(r"([0-9]{1,19}):([0-9a-fA-F]{64})")


def _anchor(text: str) -> tuple[int, bytes]:
    found = _ANCHOR.fullmatch(text)
    if found is None or int(found[1]) >= 2**63:
        raise UserError(
            f"--anchor is POSITION:DIGEST, a position and 64 hexadecimal digits, not {shown(text)}"
        )
    return int(found[1]), bytes.fromhex(found[2])


@cli.command()
@click.option(
    "--workers",
    type=click.IntRange(1, MOST_WORKERS),
    default=None,
    help="Processes replaying a SQLite file's log, split by run "
    "(default: one per core, at most four, from 100,000 events on; 1: this one alone).",
)
@click.pass_obj
def rebuild(settings: Settings, workers: int | None) -> None:
    """Drop the read views and rebuild them from the log, with a progress bar."""
    out = console()
    with opened(settings, write=True) as orchestrator:
        try:
            applied, seconds = rebuild_with_progress(orchestrator, out, workers=workers)
        except CodecError as exc:
            at = f" at position {exc.position}" if exc.position is not None else ""
            raise UserError(
                f"Cannot rebuild the run views: the event{at} does not decode ({exc}). They stay "
                "out of date; `flowtrail verify` names every damaged event"
            ) from exc
        orphaned = orchestrator.orphaned_events
    rate = applied / seconds if seconds > 0 else 0.0
    out.print(
        f"Rebuilt the run views from {applied} events in {took(timedelta(seconds=seconds))} ({rate:,.0f} events/s)."
    )
    if orphaned:
        # Not an error: the views are as the log allows. But a run is missing from them.
        out.print(
            f"{orphaned} event(s) belong to runs whose creation is not in the log, and are in no "
            "view: the log is damaged, and `flowtrail verify` names where."
        )


@cli.command()
@click.argument("run_id", required=False)
@click.option("--all", "everything", is_flag=True, help="Export the whole log.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True, allow_dash=True),
    default="-",
    help="Write here instead of standard output.",
)
@click.pass_obj
def export(settings: Settings, run_id: str | None, everything: bool, output: str) -> None:
    """Write the log (--all), or one run with the runs above and below it, as JSON lines
    that `flowtrail verify --file` checks with no database."""
    if everything and run_id is not None:
        raise UserError("Name one run to export or pass --all for the whole log, not both")
    if not everything and run_id is None:
        raise UserError("Name one run to export, or pass --all for the whole log")
    if output != "-":
        _refuse_the_logs_own_files(settings.url, output)
    with opened(settings) as orchestrator, _written_whole(output) as out:
        count = orchestrator.export(out, run_id)
    if output != "-":
        click.echo(f"Exported {count} events to {output}.", err=True)


def _refuse_the_logs_own_files(url: str, output: str) -> None:
    """An export moved over the SQLite log (or its WAL, its index) would destroy it."""
    target = parse_url(url)
    if target.backend != "sqlite" or is_memory(target.target):
        return
    written = Path(os.path.realpath(output))
    for suffix in ("", "-wal", "-shm", "-journal"):
        own = Path(os.path.realpath(f"{target.target}{suffix}"))
        if written == own or (written.exists() and own.exists() and os.path.samefile(written, own)):
            raise UserError(
                f"{output} is the log's own file: an export written there would destroy the log; "
                "name another file"
            )


@contextmanager
def _written_whole(output: str) -> Iterator[IO[str]]:
    """Standard output for ``-``. A file is written whole or not at all: into a new file
    beside it, moved over it once the export is complete and on disk; a failed or
    interrupted export leaves what was there. What is not a regular file (a device, a
    pipe) is written in place, and a symbolic link is written through."""
    if output == "-":
        yield sys.stdout
        return
    try:
        mode: int | None = os.stat(output).st_mode  # through symbolic links (/dev/stdout too)
    except OSError:
        mode = None
    if mode is not None and stat.S_ISDIR(mode):
        raise UserError(f"{output} is a folder: name a file to write the export to")
    if mode is not None and not stat.S_ISREG(mode):
        with open(output, "w", encoding="utf-8") as out:
            yield out
        return
    if output.endswith(("/", os.sep)):
        raise UserError(f"{output} ends with '/', which names a folder: name a file to write the export to")
    target = Path(os.path.realpath(output))  # through a symbolic link, to the file it names
    try:
        handle, partial = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    except OSError as exc:
        raise UserError(f"Cannot write the export to {output}: {exc.strerror or exc}") from None
    try:
        os.fchmod(handle, stat.S_IMODE(target.stat().st_mode) if target.exists() else 0o666 & ~_umask())
        with _terminated_as_exit(), os.fdopen(handle, "w", encoding="utf-8") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise


#: How a command ends when SIGTERM stops it while it cleans up: as SIGTERM ends a tool.
TERMINATED = 128 + signal.SIGTERM


@contextmanager
def _terminated_as_exit() -> Iterator[None]:
    """SIGTERM raised as SystemExit in the block, so that what it leaves half-written is
    removed (SIGTERM's default action ends the process where it stands); where SIGTERM
    has its default action, on the main thread, and put back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def exit_now(number: int, frame: object) -> None:
        raise SystemExit(TERMINATED)

    signal.signal(signal.SIGTERM, exit_now)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@cli.command()
@click.pass_obj
def migrate(settings: Settings) -> None:
    """Create the log, or bring its schema up to this flowtrail's version.

    Opening a log does the same; this does it ahead of time (e.g. before starting many
    workers on one PostgreSQL database) and says where the log stands.
    """
    with SyncOrchestrator.open(settings.url) as orchestrator:
        log = orchestrator.log_id()
        last = orchestrator.last_position()
    console().print(
        f"The log at {shown_url(settings.url)} is at schema version {SCHEMA_VERSION} "
        f"(log id {log}, {last} events)."
    )


# -- the demo ----------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path(DEMO_FILE),
    show_default=True,
    help="Where the demo's SQLite log goes.",
)
@click.option("--replace", is_flag=True, help="Start over if the demo's database is already there.")
def demo(path: Path, replace: bool) -> None:
    """Run a small pipeline on a fresh log and audit it: retries, a timeout, a failure
    hook, late proposals the policy refuses; then verify and rebuild."""
    if path == Path():  # '' (click's Path makes it '.'): the folder itself
        raise UserError("--path names the demo's database file, not an empty string")
    with contextlib.suppress(RuntimeError):  # ~name of no user here: a file name that starts with ~
        path = path.expanduser()
    show_demo(path.resolve(), replace=replace)


def _steady_output() -> None:
    """Standard output and error that neither lose output nor fail on a character.

    A character the terminal's encoding lacks (a run named "café" shown under
    ``PYTHONIOENCODING=ascii``) is written escaped, not a UnicodeEncodeError half-way
    through a table. Under ``PYTHONUNBUFFERED`` Python writes text straight to the file
    descriptor and drops what a short write left (a reader closing the pipe in the
    middle of a write): the rest was lost and the command ended 0. A buffered writer
    writes on until the pipe refuses, and the closed pipe is then seen."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if not isinstance(stream, io.TextIOWrapper):
            continue  # replaced by the caller (a test's capture): left as it is
        if isinstance(stream.buffer, io.RawIOBase):
            stream.flush()
            setattr(
                sys,
                name,
                io.TextIOWrapper(
                    io.BufferedWriter(stream.buffer),
                    encoding=stream.encoding,
                    errors="backslashreplace",
                    line_buffering=True,
                ),
            )
        else:
            stream.reconfigure(errors="backslashreplace")


def main() -> None:
    """The ``flowtrail`` entry point."""
    _steady_output()
    try:
        try:
            cli(prog_name="flowtrail")
        finally:
            sys.stdout.flush()  # here, where a closed pipe is still caught, not at exit
    except (BrokenPipeError, ReaderGoneError):
        # Whatever is still buffered goes nowhere, rather than fail again at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(PIPE_CLOSED)
