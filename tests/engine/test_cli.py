"""The ``flowtrail`` command, run as a user runs it: the installed entry point, in a
subprocess, on real SQLite files (one made by ``flowtrail demo``)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from flowtrail import SyncOrchestrator
from flowtrail.core import states as s
from flowtrail.engine.demo import run_pipeline
from tests.conftest import Databases, open_databases

ENTRY_POINT = shutil.which("flowtrail", path=str(Path(sys.executable).parent))


class Ran:
    def __init__(self, done: subprocess.CompletedProcess[str]) -> None:
        self.code = done.returncode
        self.out = done.stdout
        self.err = done.stderr

    def json(self) -> Any:
        return json.loads(self.out)


def flowtrail(*args: str, database: Path | str | None = None, stdin: str | None = None, **env: str) -> Ran:
    assert ENTRY_POINT is not None, "the flowtrail entry point is not installed next to this Python"
    environment = {k: v for k, v in os.environ.items() if k != "FLOWTRAIL_DATABASE_URL"} | env
    prefix = [] if database is None else ["--database", f"sqlite:///{database}"]
    done = subprocess.run(
        [ENTRY_POINT, *prefix, *args],
        capture_output=True,
        text=True,
        input=stdin,
        env=environment,
        timeout=120,
        check=False,
    )
    return Ran(done)


def assert_user_error(ran: Ran, *words: str) -> None:
    """Exit 2, one sentence on stderr naming the problem, nothing on stdout, no traceback."""
    assert ran.code == 2, (ran.code, ran.out, ran.err)
    assert "Traceback" not in ran.err
    assert ran.out == ""
    lines = ran.err.strip().splitlines()
    assert len(lines) == 1, ran.err
    assert lines[0].startswith("flowtrail: ")
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Ran]:
    path = tmp_path_factory.mktemp("demo") / "demo.db"
    ran = flowtrail("demo", "--path", str(path), HOME=str(path.parent))
    assert ran.code == 0, ran.err
    return path, ran


@pytest.fixture
def db(demo: tuple[Path, Ran], tmp_path: Path) -> Path:
    """A copy of the demo's log that a test may change."""
    copy = tmp_path / "copy.db"
    shutil.copyfile(demo[0], copy)
    return copy


def runs_json(database: Path, *args: str) -> list[dict[str, Any]]:
    ran = flowtrail("runs", "--json", *args, database=database)
    assert ran.code == 0, ran.err
    result: list[dict[str, Any]] = ran.json()
    return result


def run_of(database: Path, flow: str) -> dict[str, Any]:
    (found,) = runs_json(database, "--flow", flow)
    return found


# -- the demo -----------------------------------------------------------------------------------


def test_the_demo_shows_a_verified_audit_trail(demo: tuple[Path, Ran]) -> None:
    out = demo[1].out
    assert "verified 47 events in 9 runs" in out
    for seen in ("RetryFailedFlows", "AwaitingRetry", "WAIT 1s", "TimedOut", "REJECT", "ABORT"):
        assert seen in out, seen
    assert "Run is already COMPLETED." in out


def test_the_demo_fires_the_failure_hook(demo: tuple[Path, Ran]) -> None:
    assert "paged on-call" in demo[1].out


def test_the_demo_shows_the_rebuilt_views_identical(demo: tuple[Path, Ran]) -> None:
    assert "all 9 run views are identical" in demo[1].out


def test_the_demo_leaves_its_log_where_it_says(demo: tuple[Path, Ran]) -> None:
    path, ran = demo
    assert f"The log stays at {path}" in ran.out
    with SyncOrchestrator.open(f"sqlite:///{path}") as orch:
        assert orch.verify().ok


def test_the_demo_output_has_no_colour_codes_when_piped(demo: tuple[Path, Ran]) -> None:
    assert "\x1b[" not in demo[1].out


def test_the_demo_will_not_overwrite_its_log_without_replace(demo: tuple[Path, Ran]) -> None:
    assert_user_error(flowtrail("demo", "--path", str(demo[0])), "--replace")


def test_the_demo_will_not_replace_a_file_that_is_not_a_flowtrail_log(tmp_path: Path) -> None:
    precious = tmp_path / "thesis.db"
    precious.write_text("years of work")
    assert_user_error(flowtrail("demo", "--path", str(precious), "--replace"), "not a flowtrail database")
    assert precious.read_text() == "years of work"


def test_the_demo_will_not_replace_a_flowtrail_log_it_did_not_make(tmp_path: Path) -> None:
    production = tmp_path / "production.db"
    with SyncOrchestrator.open(f"sqlite:///{production}") as orch:
        orch.create_flow_run("payroll", state=s.Pending())
    before = production.read_bytes()
    assert_user_error(flowtrail("demo", "--path", str(production), "--replace"), "the demo did not make")
    assert production.read_bytes() == before


def test_the_demo_replaces_a_log_it_made(demo: tuple[Path, Ran], tmp_path: Path) -> None:
    again = tmp_path / "again.db"
    shutil.copyfile(demo[0], again)
    ran = flowtrail("demo", "--path", str(again), "--replace", HOME=str(tmp_path))
    assert ran.code == 0, ran.err


def test_the_demo_writes_a_relative_path_starting_with_a_tilde_where_it_says(tmp_path: Path) -> None:
    ran = subprocess.run(
        [ENTRY_POINT, "demo", "--path", "~x.db"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "HOME": str(tmp_path / "home")},
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["~x.db"]


@pytest.mark.parametrize("name", ["we#ird dir/d.db", "a?b c/d%41.db"])
def test_the_demo_writes_its_log_to_a_path_of_any_name_and_prints_commands_that_work(
    tmp_path: Path, name: str
) -> None:
    path = tmp_path / name
    ran = flowtrail("demo", "--path", str(path), HOME=str(tmp_path))
    assert ran.code == 0, ran.err
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    (printed,) = [line for line in ran.out.splitlines() if "--database" in line and line.endswith(" runs")]
    command = shlex.split(printed)
    command[0] = str(ENTRY_POINT)
    looked = subprocess.run([*command[:-1], "runs", "--json"], capture_output=True, text=True, check=False)
    assert (looked.returncode, len(json.loads(looked.stdout))) == (0, 5)


# -- runs, history, subflow ---------------------------------------------------------------------


def test_runs_lists_every_flow_run_newest_first(db: Path) -> None:
    names = [run["flow_name"] for run in runs_json(db)]
    assert names == ["load", "publish", "build-report", "extract", "nightly-etl"]


def test_runs_filters_by_state_type(db: Path) -> None:
    assert [run["flow_name"] for run in runs_json(db, "--state", "failed")] == ["publish", "build-report"]


def test_runs_filters_by_state_name(db: Path) -> None:
    assert [run["flow_name"] for run in runs_json(db, "--state-name", "TimedOut")] == ["build-report"]


def test_runs_filters_by_parent_task_run(db: Path) -> None:
    extract = run_of(db, "extract")
    found = runs_json(db, "--parent-task-run", extract["parent_task_run_id"])
    assert [run["id"] for run in found] == [extract["id"]]


def test_runs_honours_the_limit(db: Path) -> None:
    assert len(runs_json(db, "--limit", "2")) == 2


def test_runs_with_no_match_says_so(db: Path) -> None:
    ran = flowtrail("runs", "--tag", "nothing-has-this", database=db)
    assert (ran.code, ran.out.strip()) == (0, "No flow runs match.")


def test_runs_table_names_each_run_and_its_state(db: Path) -> None:
    ran = flowtrail("runs", database=db)
    assert ran.code == 0
    assert "nightly-etl-2026-11-23" in ran.out
    assert "TimedOut" in ran.out


@pytest.mark.parametrize("command", [["runs"], ["history", "extract"], ["subflow", "extract"]])
def test_piped_output_is_tab_separated_lines_not_a_drawn_table(db: Path, command: list[str]) -> None:
    extract = run_of(db, "extract")
    if command[0] != "runs":
        command = [command[0], extract["id"] if command[0] == "history" else extract["parent_task_run_id"]]
    ran = flowtrail(*command, database=db)
    assert ran.code == 0, ran.err
    assert not set(ran.out) & set("━─│┃┏┓┗┛╇╈┡┩")
    lines = ran.out.splitlines()
    assert lines[0].split("\t")[:2] == (
        ["id", "name"] if command[0] != "history" else ["pos", "recorded (UTC)"]
    )
    assert {len(line.split("\t")) for line in lines} == {len(lines[0].split("\t"))}


def test_runs_help_shows_its_default_sort_as_it_spells_the_choices(db: Path) -> None:
    ran = flowtrail("runs", "--help")
    assert "[default: id_desc]" in " ".join(ran.out.split())


def test_the_readme_synopsis_names_every_option_of_every_command() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    synopsis = readme.split("## The command line", 1)[1].split("```console", 1)[1].split("```", 1)[0]
    for command in ("runs", "history", "subflow", "verify", "rebuild", "export", "migrate", "demo"):
        shown = flowtrail(command, "--help").out
        options = re.findall(r"^  (?:(-\w), )?(--[\w-]+)", shown, re.MULTILINE)
        lines = [line for line in synopsis.splitlines() if line.startswith(f"flowtrail {command}")]
        assert lines, command
        for short, long in options:
            if long != "--help":
                spelt = [long, f"{short} "] if short else [long]
                assert any(word in line for line in lines for word in spelt), (command, long)


def test_the_database_comes_from_the_environment(db: Path) -> None:
    ran = flowtrail("runs", "--json", FLOWTRAIL_DATABASE_URL=f"sqlite:///{db}")
    assert len(ran.json()) == 5


# --- strings from the log are shown, never acted on ------------------------------------------

_MARKUP_NAMES = ("oops[/bold]", "[bold red]markup[/bold red]", ":smile: [link=http://x]y[/link]")
_CONTROL_STATE = "\x1b[31mRED\x1b[0m\x1b]0;pwned\x07 csi\x9b"  # no NUL: refused in a name


@pytest.fixture
def hostile(tmp_path: Path) -> tuple[Path, str]:
    """A log whose runs are named in rich markup, one with a state named in control characters."""
    path = tmp_path / "hostile.db"
    with SyncOrchestrator.open(f"sqlite:///{path}") as orch:
        for name in _MARKUP_NAMES:
            run = orch.create_flow_run(name, name=name, state=s.Pending())
        orch.propose_state(run.id, s.Running(name=_CONTROL_STATE))
    return path, str(run.id)


def _assert_shown_as_given(ran: Ran) -> None:
    assert ran.code == 0, ran.err
    assert "Traceback" not in ran.err
    for name in _MARKUP_NAMES:
        assert name in ran.out
    assert "\\x1b[31mRED\\x1b[0m\\x1b]0;pwned\\x07 csi\\x9b" in ran.out
    assert not any(c in ran.out for c in "\x1b\x00\x07\x9b")


def test_runs_shows_names_in_markup_and_escapes_control_characters(hostile: tuple[Path, str]) -> None:
    _assert_shown_as_given(flowtrail("runs", database=hostile[0], COLUMNS="400"))


def test_history_shows_names_in_markup_and_escapes_control_characters(hostile: tuple[Path, str]) -> None:
    path, run_id = hostile
    ran = flowtrail("history", run_id, database=path, COLUMNS="400")
    assert ran.code == 0, ran.err
    assert _MARKUP_NAMES[-1] in ran.out  # in the title, and the creation's row
    assert "\\x1b[31mRED" in ran.out
    assert not any(c in ran.out for c in "\x1b\x00\x07\x9b")


def test_history_shows_every_decision_with_its_rule(db: Path) -> None:
    extract = run_of(db, "extract")
    ran = flowtrail("history", extract["id"], database=db)
    assert ran.code == 0
    assert "RetryFailedFlows" in ran.out
    assert "WaitForScheduledTime" in ran.out


def test_history_json_holds_each_event_with_its_position(db: Path) -> None:
    parent = run_of(db, "nightly-etl")
    entries = flowtrail("history", parent["id"], "--json", database=db).json()
    statuses = [e["event"]["decision"]["status"] for e in entries if e["event_type"] == "state_proposed"]
    assert statuses == ["ACCEPT", "ACCEPT", "ACCEPT", "REJECT", "ABORT"]
    positions = [e["position"] for e in entries]
    assert positions == sorted(positions)


def test_history_of_a_task_run_shows_its_states(db: Path) -> None:
    extract = run_of(db, "extract")
    ran = flowtrail("history", extract["parent_task_run_id"], "--json", database=db)
    assert ran.code == 0
    assert ran.json()[0]["event_type"] == "task_run_created"


def test_history_of_a_parent_task_run_marks_the_states_copied_from_its_subflow(db: Path) -> None:
    extract = run_of(db, "extract")
    ran = flowtrail("history", extract["parent_task_run_id"], database=db)
    assert ran.code == 0
    copied = [line for line in ran.out.splitlines() if "(copied from its subflow)" in line]
    assert copied
    assert not any("(forced)" in line for line in copied)


def test_subflow_finds_the_run_a_task_run_started(db: Path) -> None:
    extract = run_of(db, "extract")
    ran = flowtrail("subflow", extract["parent_task_run_id"], "--json", database=db)
    assert ran.json()["id"] == extract["id"]


def test_subflow_of_a_flow_run_id_says_it_takes_a_task_run(db: Path) -> None:
    extract = run_of(db, "extract")
    assert_user_error(
        flowtrail("subflow", extract["id"], database=db), f"{extract['id']} is a flow run", "task run"
    )


@pytest.mark.parametrize("as_json", [False, True])
def test_subflow_of_a_task_run_that_started_none_says_so_and_exits_1(db: Path, as_json: bool) -> None:
    """None is an answer, not a mistake of the user's (exit 2): as grep, 1 when nothing
    matched; ``--json`` prints the API's answer, null."""
    with SyncOrchestrator.open(f"sqlite:///{db}") as orch:
        parent = orch.create_flow_run("etl")
        task = orch.create_task_run(parent.id, task_key="plain")
    ran = flowtrail("subflow", str(task.id), *(["--json"] if as_json else []), database=db)
    assert ran.code == 1
    assert f"Task run {task.id}" in ran.err
    assert "started no flow run" in ran.err
    assert ran.out.strip() == ("null" if as_json else "")


def test_subflow_of_an_unknown_id_is_an_error(db: Path) -> None:
    assert_user_error(flowtrail("subflow", _UNKNOWN_RUN, database=db), "No run with id")


def test_an_error_starting_with_a_file_name_keeps_its_spelling(tmp_path: Path) -> None:
    text = tmp_path / "text.db"
    text.write_text("not a database at all, but long enough to have a header of a hundred bytes " * 3)
    assert_user_error(flowtrail("runs", database=text), f"flowtrail: {text} is not a SQLite database")


# -- verify, rebuild, export, as-of -----------------------------------------------------------------


def test_verify_passes_on_a_sound_log(db: Path) -> None:
    ran = flowtrail("verify", database=db)
    assert (ran.code, ran.out.split(":")[0]) == (0, "verified 47 events in 9 runs")


def test_verify_one_run_checks_it_and_the_runs_above_it(db: Path) -> None:
    extract = run_of(db, "extract")
    report = flowtrail("verify", "--run", extract["id"], "--json", database=db).json()
    assert report["ok"]
    assert report["streams_checked"] == 3  # the subflow, its parent task run, the parent flow run


def _stream_at(path: Path, position: int) -> str:
    """The stream of the event at ``position`` of the log at ``path``."""
    connection = sqlite3.connect(path)
    try:
        (stream,) = connection.execute(
            "SELECT stream_id FROM events WHERE position = ?", (position,)
        ).fetchone()
    finally:
        connection.close()
    return str(stream)


def _tamper(path: Path, sql: str) -> None:
    connection = sqlite3.connect(path)
    connection.execute("DROP TRIGGER events_are_never_updated")
    connection.execute(sql)
    connection.commit()
    connection.close()


def test_verify_fails_on_an_altered_event_and_names_its_position(db: Path) -> None:
    _tamper(db, "UPDATE events SET data = replace(data, 'Retrying', 'Fine') WHERE position = 11")
    ran = flowtrail("verify", database=db)
    assert ran.code == 1
    assert "The first: the hash at position 11" in ran.out


def test_verify_json_reports_the_problems(db: Path) -> None:
    _tamper(db, "UPDATE events SET data = replace(data, 'Retrying', 'Fine') WHERE position = 11")
    report = flowtrail("verify", "--json", database=db).json()
    assert not report["ok"]
    assert report["problems"][0]["position"] == 11


def test_rebuild_reports_events_per_second_and_keeps_the_views(db: Path) -> None:
    before = runs_json(db)
    ran = flowtrail("rebuild", database=db)
    assert ran.code == 0
    assert ran.out.startswith("Rebuilt the run views from 47 events in ")
    assert "events/s)" in ran.out
    assert runs_json(db) == before


def test_rebuild_split_over_helper_processes_keeps_the_views(db: Path) -> None:
    before = runs_json(db)
    ran = flowtrail("rebuild", "--workers", "3", database=db)
    assert ran.code == 0
    assert ran.out.startswith("Rebuilt the run views from 47 events in ")
    assert runs_json(db) == before


def test_rebuild_says_how_many_events_belong_to_runs_whose_creation_is_gone(db: Path) -> None:
    connection = sqlite3.connect(db)
    connection.execute("DROP TRIGGER events_are_never_deleted")
    (stream,) = connection.execute("SELECT stream_id FROM events WHERE position = 20").fetchone()
    connection.execute("DELETE FROM events WHERE stream_id = ? AND version = 1", (stream,))
    (left,) = connection.execute("SELECT count(*) FROM events WHERE stream_id = ?", (stream,)).fetchone()
    connection.commit()
    connection.close()
    ran = flowtrail("rebuild", database=db)
    assert ran.code == 0, ran.err
    assert ran.out.startswith(f"Rebuilt the run views from {46 - left} events in ")
    assert f"{left} event(s) belong to runs whose creation is not in the log" in ran.out
    assert "`flowtrail verify` names where" in ran.out


@pytest.mark.parametrize("workers", ["0", "33"])
def test_rebuild_with_workers_out_of_range_is_a_one_line_error(db: Path, workers: str) -> None:
    ran = flowtrail("rebuild", "--workers", workers, database=db)
    assert ran.code == 2
    assert "Traceback" not in ran.err
    assert "--workers" in ran.err


def test_an_export_of_the_whole_log_verifies_without_the_database(db: Path, tmp_path: Path) -> None:
    exported = tmp_path / "all.jsonl"
    assert flowtrail("export", "--all", "-o", str(exported), database=db).code == 0
    db.unlink()
    ran = flowtrail("verify", "--file", str(exported))
    assert (ran.code, ran.out.split(":")[0]) == (0, "verified 47 events in 9 runs")


_UNKNOWN_RUN = "01a21031-0000-7000-8000-000000000000"


def test_an_export_of_an_unknown_run_writes_nothing(db: Path) -> None:
    assert_user_error(flowtrail("export", _UNKNOWN_RUN, database=db), _UNKNOWN_RUN)


def test_a_failed_export_leaves_the_file_it_would_have_replaced(db: Path, tmp_path: Path) -> None:
    earlier = tmp_path / "earlier.jsonl"
    earlier.write_text("an earlier export\n")
    assert_user_error(flowtrail("export", _UNKNOWN_RUN, "-o", str(earlier), database=db), _UNKNOWN_RUN)
    assert earlier.read_text() == "an earlier export\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.db", "earlier.jsonl"]


def test_an_export_replaces_the_file_it_names_whole(db: Path, tmp_path: Path) -> None:
    earlier = tmp_path / "earlier.jsonl"
    earlier.write_text("an earlier export\n")
    earlier.chmod(0o640)
    assert flowtrail("export", "--all", "-o", str(earlier), database=db).code == 0
    assert json.loads(earlier.read_text().splitlines()[-1])["end"]["events"] == 47
    assert earlier.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.db", "earlier.jsonl"]


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"])
def test_an_export_onto_the_log_itself_is_refused_and_leaves_the_log(db: Path, suffix: str) -> None:
    files = {path: path.read_bytes() for path in db.parent.iterdir()}
    target = Path(f"{db}{suffix}")
    assert_user_error(flowtrail("export", "--all", "-o", str(target), database=db), "is the log")
    assert {path: path.read_bytes() for path in db.parent.iterdir()} == files
    assert flowtrail("verify", database=db).code == 0


def test_an_export_onto_the_log_through_a_symbolic_link_is_refused(db: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.jsonl"
    link.symlink_to(db)
    assert_user_error(flowtrail("export", "--all", "-o", str(link), database=db), "is the log")
    assert flowtrail("verify", database=db).code == 0


def test_an_export_into_a_missing_folder_names_the_path_given(db: Path, tmp_path: Path) -> None:
    target = tmp_path / "no-such-folder" / "all.jsonl"
    assert_user_error(flowtrail("export", "--all", "-o", str(target), database=db), str(target))


@pytest.mark.skipif(not Path("/dev/full").is_char_device(), reason="this system has no /dev/full")
def test_an_export_to_a_full_device_is_an_error_and_leaves_the_device(db: Path) -> None:
    assert_user_error(flowtrail("export", "--all", "-o", "/dev/full", database=db), "No space left")
    assert Path("/dev/full").is_char_device()


def test_an_export_onto_a_file_named_with_a_trailing_slash_is_refused_and_leaves_it(
    db: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    kept = folder / "kept.txt"
    kept.write_text("kept")
    assert_user_error(flowtrail("export", "--all", "-o", f"{kept}/", database=db), "names a folder")
    assert kept.read_text() == "kept"
    assert_user_error(flowtrail("export", "--all", "-o", f"{folder}/new/", database=db), "names a folder")
    assert sorted(path.name for path in folder.iterdir()) == ["kept.txt"]


def test_an_export_to_dev_stdout_is_written_to_standard_output(db: Path) -> None:
    ran = flowtrail("export", "--all", "-o", "/dev/stdout", database=db)
    assert ran.code == 0, ran.err
    assert len(ran.out.splitlines()) == 49  # a header, 47 events, an end line


def test_sigterm_while_an_export_is_written_leaves_no_half_written_file(tmp_path: Path) -> None:
    """SIGTERM's default action ends the process where it stands, leaving the export's
    hidden ``.partial`` file behind; it ends it as an exit now, which removes it."""
    from flowtrail.engine.cli import _written_whole

    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("the test runner handles SIGTERM itself")
    target = tmp_path / "export.jsonl"

    def export_stopped_half_way() -> None:
        with _written_whole(str(target)) as out:
            out.write("half an export")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the signal's handler raises here

    with pytest.raises(SystemExit) as ended:
        export_stopped_half_way()
    assert ended.value.code == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_an_export_describes_itself(db: Path) -> None:
    ran = flowtrail("export", "--all", database=db)
    header = json.loads(ran.out.splitlines()[0])
    assert header["format"] == "flowtrail-export"
    assert "CoreFlowPolicy@1" in header["policies"]
    assert json.loads(ran.out.splitlines()[-1])["end"]["events"] == 47


def test_an_export_of_one_run_holds_the_runs_above_and_below_it(db: Path) -> None:
    parent = run_of(db, "nightly-etl")
    exported = flowtrail("export", parent["id"], database=db).out
    ran = flowtrail("verify", "--file", "-", stdin=exported)
    assert (ran.code, ran.out.split(":")[0]) == (0, "verified 47 events in 9 runs")


def test_a_tampered_export_fails_verification(db: Path) -> None:
    exported = flowtrail("export", "--all", database=db).out.replace("Retrying", "Fine", 1)
    ran = flowtrail("verify", "--file", "-", stdin=exported)
    assert ran.code == 1
    assert "the hash at position 11" in ran.out


def test_an_export_missing_its_last_lines_fails_verification(db: Path) -> None:
    lines = flowtrail("export", "--all", database=db).out.splitlines()
    ran = flowtrail("verify", "--file", "-", stdin="\n".join(lines[:-5]) + "\n")
    assert ran.code == 1
    assert "cut short" in ran.out


def test_an_export_with_an_event_removed_fails_verification(db: Path) -> None:
    lines = flowtrail("export", "--all", database=db).out.splitlines()
    del lines[30]
    ran = flowtrail("verify", "--file", "-", stdin="\n".join(lines) + "\n")
    assert ran.code == 1
    assert "position 30 is missing" in ran.out


def test_as_of_shows_the_runs_as_they_were(db: Path) -> None:
    parent = run_of(db, "nightly-etl")
    entries = flowtrail("history", parent["id"], "--json", database=db).json()
    running_at = entries[2]["position"]  # created, Pending, Running
    then = flowtrail("as-of", str(running_at), "runs", "--json", database=db).json()
    assert [(run["flow_name"], run["state"]["name"]) for run in then] == [("nightly-etl", "Running")]


def test_as_of_the_last_position_matches_the_live_views(db: Path) -> None:
    then = flowtrail("as-of", "47", "runs", "--json", database=db).json()
    assert then == runs_json(db)


# -- errors a user can cause ------------------------------------------------------------------------


def test_an_unknown_run_id_is_one_sentence(db: Path) -> None:
    assert_user_error(
        flowtrail("history", "01a20c95-0000-7000-8000-000000000000", database=db), "No run with id"
    )


def test_a_run_id_that_is_not_a_uuid_is_one_sentence(db: Path) -> None:
    assert_user_error(flowtrail("history", "'; DROP TABLE events; --", database=db), "not a UUID")


def test_a_bad_url_is_one_sentence() -> None:
    assert_user_error(flowtrail("--database", "mysql://somewhere/db", "runs"), "mysql")


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///{db}?busy_timeout=nan",
        "sqlite:///{db}?busy_timeout=1e300",
        "postgresql://h/db?busy_timeout=inf",
        "postgres://[::1",
        "sqlite:///~no-such-user-here/runs.db",
    ],
)
def test_a_url_that_python_cannot_read_is_one_sentence(url: str, db: Path) -> None:
    assert_user_error(flowtrail("--database", url.format(db=db), "runs"))


def test_an_empty_url_in_the_environment_is_one_sentence() -> None:
    assert_user_error(flowtrail("runs", FLOWTRAIL_DATABASE_URL=" "), "FLOWTRAIL_DATABASE_URL")


def test_a_missing_database_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.db"
    assert_user_error(flowtrail("runs", database=missing), "There is no flowtrail database at")
    assert not missing.exists()


def test_a_missing_default_log_points_at_the_log_the_demo_leaves(tmp_path: Path) -> None:
    ran = flowtrail("runs", HOME=str(tmp_path))
    assert_user_error(ran, "There is no flowtrail database at", "--database sqlite:///flowtrail-demo.db")
    hinted = ran.err.rsplit("--database ", 1)[1].rstrip(")\n")
    assert ENTRY_POINT is not None
    for command in (["demo"], ["--database", hinted, "runs", "--json"]):
        done = subprocess.run(
            [ENTRY_POINT, *command], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)) == 5


def test_a_missing_named_log_says_how_to_create_it(tmp_path: Path) -> None:
    assert_user_error(flowtrail("runs", database=tmp_path / "nothing.db"), "flowtrail migrate")


def test_a_file_that_is_not_sqlite_is_one_sentence(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(os.urandom(4096))
    assert_user_error(flowtrail("verify", database=garbage), "not a SQLite database")


def test_a_sqlite_file_of_another_program_is_one_sentence(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE customers (id INTEGER)")
    connection.close()
    assert_user_error(flowtrail("runs", database=other), "not a flowtrail database")


@pytest.mark.parametrize(
    "command", [["runs"], ["verify"], ["history", "01a21031-8d4e-7333-a7e9-aa6fc69fc4ad"]]
)
def test_reading_a_database_of_another_program_leaves_every_byte_of_it(
    tmp_path: Path, command: list[str]
) -> None:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE customers (id INTEGER)")
    connection.close()
    before = other.read_bytes()
    assert_user_error(flowtrail(*command, database=other), "not a flowtrail database")
    assert other.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


def test_reading_an_empty_file_leaves_it_empty(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    assert_user_error(flowtrail("runs", database=empty), "no flowtrail log")
    assert empty.stat().st_size == 0


def test_a_database_from_a_newer_flowtrail_is_one_sentence(db: Path) -> None:
    with sqlite3.connect(db) as connection:
        connection.execute("UPDATE flowtrail_meta SET value = '99' WHERE key = 'schema_version'")
    connection.close()
    assert_user_error(flowtrail("runs", database=db), "schema version 99", "newer flowtrail")


def test_a_position_past_the_end_is_one_sentence(db: Path) -> None:
    assert_user_error(flowtrail("as-of", "48", "runs", database=db), "past the end of the log")


def test_export_needs_a_run_or_all(db: Path) -> None:
    assert_user_error(flowtrail("export", database=db), "--all")


def test_export_of_a_run_and_all_at_once_says_to_choose(db: Path) -> None:
    run = run_of(db, "extract")["id"]
    assert_user_error(flowtrail("export", "--all", run, database=db), "not both")


def test_a_missing_export_file_is_one_sentence(tmp_path: Path) -> None:
    assert_user_error(flowtrail("verify", "--file", str(tmp_path / "gone.jsonl")), "gone.jsonl")


@pytest.mark.parametrize(
    "command",
    [
        ["export", "--all"],
        ["runs"],
        ["runs", "--json"],
        ["verify", "--json"],
        ["history", "--json", _UNKNOWN_RUN],
        ["--help"],
        ["runs", "--help"],
        ["--version"],
    ],
)
def test_every_command_into_a_pipe_whose_reader_has_gone_stops_without_a_word(
    db: Path, command: list[str]
) -> None:
    """`flowtrail export --all | head -c 10`: the reader leaving is not an error to report,
    and no command says "verify found a problem" (1) for it: each ends as SIGPIPE ends a
    Unix tool, 128 + 13."""
    assert ENTRY_POINT is not None
    if command[0] == "history":
        command = [*command[:-1], run_of(db, "extract")["id"]]
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before the first line
    try:
        done = subprocess.run(
            [ENTRY_POINT, "--database", f"sqlite:///{db}", *command],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")


@pytest.fixture(scope="module")
def long_listing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A log of 300 runs, one named in characters outside ASCII: ``runs --limit 300
    --json`` prints about 300 KB, more than a pipe holds."""
    path = tmp_path_factory.mktemp("listing") / "runs.db"
    with SyncOrchestrator.open(f"sqlite:///{path}") as orch:
        for index in range(300):
            orch.create_flow_run("etl", name="café🚀" if index == 299 else None, state=s.Pending())
    return path


@pytest.mark.parametrize("unbuffered", ["", "1"], ids=["buffered", "PYTHONUNBUFFERED"])
def test_a_reader_leaving_in_the_middle_of_a_long_output_ends_the_command_as_a_closed_pipe(
    long_listing: Path, unbuffered: str
) -> None:
    """Unbuffered, Python dropped what a short write left, and the command ended 0 with
    its JSON cut short."""
    assert ENTRY_POINT is not None
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        environment["PYTHONUNBUFFERED"] = unbuffered
    command = [ENTRY_POINT, "--database", f"sqlite:///{long_listing}", "runs", "--limit", "300", "--json"]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        assert process.stdout.read(10)
        process.stdout.close()  # the reader leaves, the command still writing
        errors = process.stderr.read()
        assert (process.wait(timeout=120), errors) == (141, b"")


def test_a_name_the_terminals_encoding_lacks_is_shown_escaped(long_listing: Path) -> None:
    ran = flowtrail("runs", "--limit", "1", database=long_listing, PYTHONIOENCODING="ascii")
    assert ran.code == 0, ran.err
    assert "caf\\xe9\\U0001f680" in ran.out


def test_json_output_is_utf8_whatever_the_terminals_encoding(long_listing: Path) -> None:
    assert ENTRY_POINT is not None
    done = subprocess.run(
        [ENTRY_POINT, "--database", f"sqlite:///{long_listing}", "runs", "--limit", "1", "--json"],
        capture_output=True,
        env=os.environ | {"PYTHONIOENCODING": "ascii"},
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.decode("utf-8"))[0]["name"] == "café🚀"


def test_ctrl_c_ends_a_command_with_130_and_no_traceback(db: Path) -> None:
    """As a shell reports any tool SIGINT stops; click printed "Aborted!" and exited 1,
    which says that verify found a problem."""
    assert ENTRY_POINT is not None
    command = [ENTRY_POINT, "--database", f"sqlite:///{db}", "verify", "--file", "-"]
    # SIGINT's usual action restored first: a job started in the background ignores it.
    restored = f"import os, signal; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv({command[0]!r}, {command!r})"
    with subprocess.Popen(
        [sys.executable, "-c", restored],
        stdin=subprocess.PIPE,  # kept open: the command waits for the export's first line
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        started = time.monotonic()
        # Asleep, and long past the imports (a signal during them is Python's own).
        while time.monotonic() - started < 2 or _waiting_state(process.pid) != "S":
            assert time.monotonic() - started < 60, "the command never waited for its input"
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    assert (process.returncode, out, err.strip()) == (130, b"", b"")


def _waiting_state(pid: int) -> str:
    """The process's state letter (S: asleep, waiting)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_verify_of_a_file_whose_first_line_never_ends_refuses_it_at_once() -> None:
    """/dev/zero: its first line was read to its end before it was refused, for ever."""
    ran = flowtrail("verify", "--file", "/dev/zero")
    assert_user_error(ran, "not a flowtrail export", "first line is longer than any event can be")


def test_every_run_of_runs_json_has_the_same_keys_defaults_included(db: Path, tmp_path: Path) -> None:
    """A fresh run had no state, run_count or tags keys, a root run no parent keys: a
    program reading the records had to know which defaults the views leave out."""
    with SyncOrchestrator.open(f"sqlite:///{db}") as orch:
        orch.create_flow_run("fresh")
    records = flowtrail("runs", "--json", "--limit", "100", database=db).json()
    assert len(records) > 2
    assert len({tuple(record) for record in records}) == 1
    fresh = next(record for record in records if record["flow_name"] == "fresh")
    assert (fresh["state"], fresh["run_count"], fresh["tags"], fresh["parent_task_run_id"]) == (
        None,
        0,
        [],
        None,
    )


def test_a_demo_path_given_empty_is_one_sentence_not_the_folder(tmp_path: Path) -> None:
    ran = flowtrail("demo", "--path", "", HOME=str(tmp_path))
    assert_user_error(ran, "not an empty string")


def test_a_file_that_is_not_an_export_is_one_sentence() -> None:
    assert_user_error(flowtrail("verify", "--file", "-", stdin='{"hello": 1}\n'), "not a flowtrail export")


def test_an_export_that_is_not_text_is_one_sentence(tmp_path: Path) -> None:
    binary = tmp_path / "export.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert_user_error(flowtrail("verify", "--file", str(binary)), "not UTF-8")


def _exported_lines(db: Path) -> list[str]:
    ran = flowtrail("export", "--all", database=db)
    assert ran.code == 0, ran.err
    return ran.out.splitlines()


def assert_export_problem(lines: list[str], *words: str) -> None:
    """verify --file reports a problem (exit 1, with --json too) naming it, no traceback."""
    text = "\n".join(lines) + "\n"
    ran = flowtrail("verify", "--file", "-", stdin=text)
    assert ran.code == 1, (ran.code, ran.out, ran.err)
    assert (ran.err, "Traceback" in ran.out) == ("", False)
    first = ran.out.split("The first: ", 1)[1].splitlines()[0]
    for word in words:
        assert word in first, (word, first)
    report = flowtrail("verify", "--file", "-", "--json", stdin=text)
    assert report.code == 1
    assert not report.json()["ok"]


def test_an_export_line_that_is_not_an_event_is_a_problem_it_reports(db: Path) -> None:
    lines = _exported_lines(db)
    lines[3] = '{"position": "three"}'
    assert_export_problem(lines, "line 4 of the export is not an event")


@pytest.mark.parametrize("field", ["position", "version", "recorded_at", "schema_version"])
def test_an_export_event_with_a_number_no_log_can_hold_is_a_problem(db: Path, field: str) -> None:
    lines = _exported_lines(db)
    event = json.loads(lines[5])
    event[field] = 10**30
    lines[5] = json.dumps(event)
    assert_export_problem(lines, "line 6", f"{field} 1000")


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        ('"recorded_at": ' + "9" * 5001, ["line 6", "more digits"]),
        ('"recorded_at": 1e400', ["line 6", "recorded_at is Infinity"]),
        ('"position": 7.5', ["line 6", "position is 7.5, not a whole number"]),
        ('"position": "5"', ["line 6", 'position is "5", not a whole number']),
        ('"position": true', ["line 6", "position is true, not a whole number"]),
        ('"hash": null', ["line 6", "hash is null, not a string"]),
    ],
)
def test_a_damaged_field_of_an_export_event_is_a_problem_it_reports(
    db: Path, damage: str, words: list[str]
) -> None:
    lines = _exported_lines(db)
    key = damage.split(":", maxsplit=1)[0]
    event = json.loads(lines[5])
    lines[5] = lines[5].replace(f"{key}: {json.dumps(event[key.strip(chr(34))])}", damage)
    assert damage in lines[5]
    assert_export_problem(lines, *words)


def test_an_export_line_nested_past_any_parser_is_a_problem_it_reports(db: Path) -> None:
    lines = _exported_lines(db)
    lines.insert(3, '{"a":' * 100_000)
    assert_export_problem(lines, "line 4", "nests values deeper")


def test_an_export_line_holding_a_nul_byte_is_a_problem_in_a_whole_sentence(db: Path) -> None:
    lines = _exported_lines(db)
    lines[5] = lines[5][:40] + "\x00" + lines[5][40:]
    assert_export_problem(lines, "line 6 of the export is not JSON: invalid control character at column 41")


def test_an_export_line_that_is_not_utf8_is_a_problem_it_reports(db: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.jsonl"
    lines = [line.encode() for line in _exported_lines(db)]
    lines[5] = lines[5][:40] + b"\xff" + lines[5][40:]
    damaged.write_bytes(b"\n".join(lines) + b"\n")
    ran = flowtrail("verify", "--file", str(damaged))
    assert ran.code == 1, ran.err
    assert "The first: line 6 of the export is not UTF-8 text" in ran.out


@pytest.mark.parametrize("field", ["stream_id", "event_type"])
def test_an_export_text_utf8_cannot_hold_is_a_problem_it_reports(db: Path, field: str) -> None:
    lines = _exported_lines(db)
    lines[5] = lines[5].replace(f'"{field}": "', f'"{field}": "\\ud800', 1)
    assert_export_problem(
        lines, f"line 6 of the export is not an event: its {field} is not text UTF-8 can hold"
    )


def test_a_header_policy_utf8_cannot_hold_is_a_problem_it_reports_in_json(db: Path) -> None:
    lines = _exported_lines(db)
    lines[0] = lines[0].replace('"policies": [', '"policies": ["X\\ud800@1", ')
    assert_export_problem(lines, "the header names the policy", "not text UTF-8 can hold")


def test_an_unchanged_export_of_a_log_with_an_unreadable_event_finds_what_a_check_of_the_log_does(
    db: Path, tmp_path: Path
) -> None:
    _tamper(db, "UPDATE events SET recorded_at = 'abc' WHERE position = 10")
    exported = tmp_path / "damaged.jsonl"
    assert flowtrail("export", "--all", "-o", str(exported), database=db).code == 0
    of_log = flowtrail("verify", "--json", database=db).json()["problems"]
    of_export = flowtrail("verify", "--file", str(exported), "--json").json()["problems"]
    assert len(of_export) == len(of_log)
    assert [p["message"] for p in of_export[1:]] == [p["message"] for p in of_log[1:]]


def test_an_event_line_after_the_end_line_is_a_problem_it_reports(db: Path) -> None:
    lines = _exported_lines(db)
    assert_export_problem([*lines, lines[5]], f"line {len(lines) + 1} of the export comes after its end line")


def test_an_end_line_naming_another_last_position_is_a_problem(db: Path) -> None:
    lines = _exported_lines(db)
    end = json.loads(lines[-1])
    end["end"]["last_position"] = 99
    assert_export_problem([*lines[:-1], json.dumps(end)], "last event is at position 47", "records 99")


def test_a_whole_export_without_its_log_digest_is_a_problem(db: Path) -> None:
    lines = _exported_lines(db)
    end = json.loads(lines[-1])
    del end["end"]["log_digest"]
    assert_export_problem([*lines[:-1], json.dumps(end)], "no log digest")


def test_a_verified_export_says_which_log_it_claims_to_come_from(db: Path) -> None:
    lines = _exported_lines(db)
    log = json.loads(lines[0])["log"]
    ran = flowtrail("verify", "--file", "-", stdin="\n".join(lines) + "\n")
    assert ran.code == 0, ran.err
    assert f"taken from the log with id {log}" in ran.out
    assert flowtrail("verify", "--file", "-", "--json", stdin="\n".join(lines)).json()["export_of"] == log


def test_a_header_naming_a_policy_that_neither_exists_nor_decided_anything_is_a_problem(db: Path) -> None:
    lines = _exported_lines(db)
    header = json.loads(lines[0])
    header["policies"].append("InventedPolicy@3")
    assert_export_problem([json.dumps(header), *lines[1:]], "InventedPolicy@3", "no event uses")


def test_a_header_leaving_out_a_policy_its_events_were_decided_by_is_a_problem(db: Path) -> None:
    lines = _exported_lines(db)
    header = json.loads(lines[0])
    header["policies"].remove("CoreFlowPolicy@1")
    assert_export_problem([json.dumps(header), *lines[1:]], "CoreFlowPolicy@1", "do not name")


def test_a_header_whose_log_is_not_a_log_id_is_a_problem(db: Path) -> None:
    lines = _exported_lines(db)
    header = json.loads(lines[0]) | {"log": 12}
    assert_export_problem([json.dumps(header), *lines[1:]], "names the log 12")


def test_an_overlong_export_line_is_refused_in_bounded_memory(db: Path, tmp_path: Path) -> None:
    """A line far past the longest an event can be is read in bounded pieces, not whole."""
    lines = _exported_lines(db)
    huge = tmp_path / "huge.jsonl"
    with huge.open("w") as out:
        out.write("\n".join(lines[:5]) + '\n{"data": "')
        for _ in range(160):
            out.write("x" * 1024 * 1024)
        out.write('"}\n' + "\n".join(lines[5:]) + "\n")
    script = (
        "import resource, subprocess, sys; "
        "done = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024); "
        "print(done.stdout)"
    )
    assert ENTRY_POINT is not None
    ran = subprocess.run(
        [sys.executable, "-c", script, ENTRY_POINT, "verify", "--file", str(huge)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    code, megabytes = (int(word) for word in ran.stdout.split()[:2])
    assert code == 1
    assert "line 6 of the export is longer than any event can be" in ran.stdout
    assert megabytes < 160, megabytes


def test_an_export_of_an_event_whose_bytes_are_not_utf8_verifies_naming_the_damage(
    db: Path, tmp_path: Path
) -> None:
    """An auditor exports a damaged log as it is: the export fails verification as the log does."""
    _tamper(db, "UPDATE events SET data = x'ff00ff' WHERE position = 20")
    exported = tmp_path / "damaged.jsonl"
    ran = flowtrail("export", "--all", "-o", str(exported), database=db)
    assert ran.code == 0, ran.err
    assert '"data_hex": "ff00ff"' in exported.read_text()
    checked = flowtrail("verify", "--file", str(exported))
    assert checked.code == 1, checked.err
    assert "The first: the hash at position 20" in checked.out
    assert "position 20 does not decode" in checked.out


@pytest.mark.parametrize("as_json", [[], ["--json"]])
def test_history_of_a_run_whose_recording_time_was_damaged_is_one_sentence(
    db: Path, as_json: list[str]
) -> None:
    _tamper(db, "UPDATE events SET recorded_at = 'abc' WHERE position = 20")
    stream = _stream_at(db, 20)
    assert_user_error(flowtrail("history", stream, *as_json, database=db), "position 20", "'abc'")


def test_verify_reports_a_row_whose_data_is_not_bytes_as_a_problem_of_the_log(db: Path) -> None:
    _tamper(db, "UPDATE events SET data = 5 WHERE position = 20")
    ran = flowtrail("verify", database=db)
    assert ran.code == 1, ran.err
    assert "The first: the row at position 20 holds a value of the wrong type" in ran.out
    report = flowtrail("verify", "--json", database=db)
    assert (report.code, report.json()["problems"][0]["position"]) == (1, 20)


def test_verify_of_one_run_reports_its_row_whose_data_is_not_bytes_as_a_problem(db: Path) -> None:
    _tamper(db, "UPDATE events SET data = 5 WHERE position = 21")
    stream = _stream_at(db, 21)
    ran = flowtrail("verify", "--run", stream, database=db)
    assert ran.code == 1, ran.err
    assert "The first: the row at position 21 holds a value of the wrong type" in ran.out


@pytest.mark.parametrize("command", ["history", "export"])
def test_a_run_whose_schema_version_was_edited_to_text_is_one_sentence(db: Path, command: str) -> None:
    _tamper(db, "UPDATE events SET schema_version = 'v' WHERE position = 20")
    stream = _stream_at(db, 20)
    assert_user_error(flowtrail(command, stream, database=db), "position 20 holds str", "schema version")


def test_verify_reports_a_row_whose_version_is_not_a_number_as_a_problem_of_the_log(db: Path) -> None:
    _tamper(db, "UPDATE events SET version = 'x' WHERE position = 10")
    ran = flowtrail("verify", database=db)
    assert ran.code == 1, ran.err
    assert "Traceback" not in ran.err
    assert "The first: the row at position 10 holds a value of the wrong type" in ran.out


def test_export_of_a_row_holding_bytes_where_the_log_keeps_text_is_one_sentence(
    db: Path, tmp_path: Path
) -> None:
    _tamper(db, "UPDATE events SET stream_id = cast(stream_id AS blob) WHERE position = 10")
    out = tmp_path / "export.jsonl"
    ran = flowtrail("export", "--all", "-o", str(out), database=db)
    assert_user_error(ran, "position 10 holds bytes as its stream_id", "flowtrail verify")
    assert not out.exists()


def test_a_row_edited_to_hold_text_that_is_not_utf8_is_named_by_verify_and_exported(
    db: Path, tmp_path: Path
) -> None:
    _tamper(db, "UPDATE events SET data = data || x'ff' WHERE position = 10")
    ran = flowtrail("verify", database=db)
    assert ran.code == 1, ran.err
    assert "The first: the hash at position 10 does not seal its contents" in ran.out
    exported = tmp_path / "damaged.jsonl"
    assert flowtrail("export", "--all", "-o", str(exported), database=db).code == 0
    checked = flowtrail("verify", "--file", str(exported))
    assert checked.code == 1, checked.err
    assert "The first: the hash at position 10 does not seal its contents" in checked.out


def test_a_row_edited_to_hold_text_that_is_not_utf8_is_named_by_verify_of_its_run(db: Path) -> None:
    _tamper(db, "UPDATE events SET data = data || x'ff' WHERE position = 10")
    stream = _stream_at(db, 10)
    ran = flowtrail("verify", "--run", stream, database=db)
    assert ran.code == 1, ran.err
    assert "The first: the hash at position 10 does not seal its contents" in ran.out


def test_history_of_a_run_whose_event_does_not_decode_names_its_position(db: Path) -> None:
    _tamper(db, "UPDATE events SET data = data || x'ff' WHERE position = 10")
    stream = _stream_at(db, 10)
    assert_user_error(flowtrail("history", stream, database=db), "The event at position 10 is damaged")


def test_a_stream_id_edited_to_text_that_is_not_utf8_is_named_by_verify(db: Path) -> None:
    _tamper(db, "UPDATE events SET stream_id = stream_id || x'ff' WHERE position = 10")
    ran = flowtrail("verify", database=db)
    assert ran.code == 1, ran.err
    assert "The first: the row at position 10 holds a value of the wrong type" in ran.out


# -- the library stays light --------------------------------------------------------------------------


def test_importing_flowtrail_loads_no_cli_or_terminal_library() -> None:
    code = "import sys, flowtrail; print(sorted({m.split('.')[0] for m in sys.modules} & {'click', 'rich', 'structlog'}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# -- on PostgreSQL ------------------------------------------------------------------------------------


@pytest.fixture
def pg(tmp_path: Path) -> Any:
    databases = open_databases("postgresql", tmp_path)
    yield databases
    databases.cleanup()


@pytest.mark.postgres
def test_a_missing_postgresql_log_is_not_created_by_a_read(pg: Databases) -> None:
    url = pg.url("absent")
    assert_user_error(flowtrail("--database", url, "runs"), "There is no flowtrail log at")
    assert_user_error(flowtrail("--database", url, "runs"), "There is no flowtrail log at")


@pytest.mark.postgres
def test_a_password_in_the_query_of_a_postgresql_url_is_not_shown(pg: Databases) -> None:
    """libpq takes a password from the query as well as before the host (this server
    trusts the test's user, and ignores it)."""
    url = pg.url("hidden", password="s3cret")
    missing = flowtrail("--database", url, "runs")
    assert_user_error(missing, "There is no flowtrail log at", "password=***")
    assert "s3cret" not in missing.err
    migrated = flowtrail("--database", url, "migrate")
    assert migrated.code == 0, migrated.err
    assert "password=***" in migrated.out
    assert "s3cret" not in migrated.out + migrated.err


@pytest.mark.postgres
def test_migrate_creates_a_postgresql_log_that_reads_as_empty(pg: Databases) -> None:
    url = pg.url("migrated")
    ran = flowtrail("--database", url, "migrate")
    assert ran.code == 0, ran.err
    assert "is at schema version 1" in ran.out
    assert flowtrail("--database", url, "runs").out.strip() == "No flow runs match."


@pytest.mark.postgres
def test_the_commands_work_on_a_postgresql_log(pg: Databases, tmp_path: Path) -> None:
    url = pg.url("demo")
    run_pipeline(url)
    assert len(flowtrail("--database", url, "runs", "--json").json()) == 5
    ran = flowtrail("--database", url, "verify")
    assert (ran.code, ran.out.split(":")[0]) == (0, "verified 47 events in 9 runs")
    exported = tmp_path / "pg.jsonl"
    assert flowtrail("--database", url, "export", "--all", "-o", str(exported)).code == 0
    assert flowtrail("verify", "--file", str(exported)).code == 0
    assert flowtrail("--database", url, "rebuild").code == 0


def test_an_unreachable_postgresql_server_is_one_sentence() -> None:
    ran = flowtrail("--database", "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2", "runs")
    assert_user_error(ran, "Cannot connect to PostgreSQL")


def test_verify_prints_the_log_digest_that_a_later_verify_checks_as_its_anchor(db: Path) -> None:
    ran = flowtrail("verify", database=db)
    assert ran.code == 0
    digest = ran.out.split("log digest at position 47: ")[1].split()[0]
    assert flowtrail("verify", "--anchor", f"47:{digest}", database=db).code == 0
    wrong = ("0" if digest[0] != "0" else "1") + digest[1:]
    failed = flowtrail("verify", "--anchor", f"47:{wrong}", database=db)
    assert failed.code == 1
    assert "is not the one anchored" in failed.out


@pytest.mark.parametrize(
    "anchor",
    [
        "47",
        "x:00",
        "47:abc",
        f"-1:{'0' * 64}",
        f"\u00b2:{'0' * 64}",  # a digit to str.isdigit, not to int()
        f"47:{'0' * 30} {'0' * 34}",  # bytes.fromhex skips spaces
        f"{10**25}:{'0' * 64}",
    ],
)
def test_a_malformed_anchor_is_one_sentence(db: Path, anchor: str) -> None:
    assert_user_error(flowtrail("verify", "--anchor", anchor, database=db), "--anchor is POSITION:DIGEST")


_HUGE = "x" * 100_000


@pytest.mark.parametrize(
    "arguments",
    [
        ["history", _HUGE],
        ["subflow", _HUGE],
        ["runs", "--parent-task-run", _HUGE],
        ["verify", "--anchor", _HUGE],
    ],
    ids=["history", "subflow", "parent-task-run", "anchor"],
)
def test_an_argument_of_100000_characters_is_quoted_cut_short(db: Path, arguments: list[str]) -> None:
    ran = flowtrail(*arguments, database=db)
    assert_user_error(ran, "(100000 characters)")
    assert len(ran.err) < 400


def test_a_url_option_of_100000_characters_is_quoted_cut_short(db: Path) -> None:
    ran = flowtrail("--database", f"sqlite:///{db}?mode={_HUGE}", "runs")
    assert_user_error(ran, "(100000 characters)")
    assert len(ran.err) < 400


def test_the_demo_replaces_a_log_an_earlier_demo_made_before_demo_logs_were_marked(
    demo: tuple[Path, Ran], tmp_path: Path
) -> None:
    earlier = tmp_path / "earlier.db"
    shutil.copyfile(demo[0], earlier)
    with sqlite3.connect(earlier) as connection:
        connection.execute("DELETE FROM flowtrail_meta WHERE key = 'made_by'")
    connection.close()
    assert flowtrail("demo", "--path", str(earlier), "--replace", HOME=str(tmp_path)).code == 0


def test_an_export_through_a_symbolic_link_replaces_the_file_it_names(db: Path, tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "target.jsonl").write_text("an earlier export\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(real / "target.jsonl")
    assert flowtrail("export", "--all", "-o", str(link), database=db).code == 0
    assert link.is_symlink()
    assert json.loads((real / "target.jsonl").read_text().splitlines()[-1])["end"]["events"] == 47


# --- a log this process may not write --------------------------------------------------------

_RUNUSER = shutil.which("runuser")


def _nobody_can_run_flowtrail() -> bool:
    """Whether this machine lets the user nobody run this flowtrail (root can switch to it,
    and the interpreter is not in a folder only root may enter)."""
    if os.geteuid() != 0 or _RUNUSER is None or ENTRY_POINT is None:
        return False
    done = subprocess.run(
        [_RUNUSER, "-u", "nobody", "--", ENTRY_POINT, "--version"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    return done.returncode == 0


@pytest.mark.parametrize("where", ["folder", "file"])
def test_a_log_this_user_may_not_write_is_read_and_verified_but_not_rebuilt(db: Path, where: str) -> None:
    if not _nobody_can_run_flowtrail():
        pytest.skip("needs root, runuser, and an interpreter the user nobody may run")
    shared = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        shared.chmod(0o777 if where == "file" else 0o755)
        log = shared / "log.db"
        shutil.copyfile(db, log)
        log.chmod(0o644)
        before = log.read_bytes()

        def as_nobody(*args: str) -> Ran:
            command = [
                str(_RUNUSER),
                "-u",
                "nobody",
                "--",
                str(ENTRY_POINT),
                "--database",
                f"sqlite:///{log}",
            ]
            environment = {"PATH": os.environ.get("PATH", ""), "HOME": str(shared)}
            return Ran(
                subprocess.run(
                    [*command, *args],
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=False,
                    env=environment,
                )
            )

        verified = as_nobody("verify")
        assert verified.code == 0, verified.err
        assert verified.out.startswith("verified 47 events")
        assert as_nobody("runs", "--json").code == 0
        refused = "cannot be written by this process" if where == "folder" else "cannot be read and written"
        assert_user_error(as_nobody("rebuild"), refused)
        assert log.read_bytes() == before
    finally:
        shutil.rmtree(shared)
