"""Flows in real processes: killed, terminated, timed out, restarted."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from flowtrail import StateType, SyncOrchestrator, states
from tests.conftest import Databases

ROOT = Path(__file__).parent.parent.parent


def _start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.engine.flow_workers", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _wait_for_line(process: subprocess.Popen[str], expected: str) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        if line.strip() == expected:
            return
    raise AssertionError(
        f"the worker ended before printing {expected!r}: {process.stderr.read() if process.stderr else ''}"
    )


def _finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    out, err = process.communicate(timeout=60)
    return process.returncode, out + err


def _only(orch: SyncOrchestrator, flow_name: str) -> Any:
    (run,) = orch.read_flow_runs(flow_names=[flow_name])
    return run


def test_a_killed_flow_stays_running_until_a_crash_is_proposed(databases: Databases, tmp_path: Path) -> None:
    url = databases.url("kill")
    worker = _start("sleeper", url, str(tmp_path / "marker"))
    _wait_for_line(worker, "running")
    worker.send_signal(signal.SIGKILL)
    code, _ = _finish(worker)
    assert code == -signal.SIGKILL
    with SyncOrchestrator.open(url) as orch:
        run = _only(orch, "sleeper")
        assert run.state.type is StateType.RUNNING, "nobody was left to record anything"
        crashed = orch.propose_state(
            run.id, states.Crashed(message="The process running it was killed."), force=True
        )
        assert crashed.state.type is StateType.CRASHED
        assert orch.verify().ok


def _terminated(command: str, url: str, marker: Path) -> None:
    """Run the worker until its flow runs, then send it SIGTERM; it ends as SIGTERM says."""
    worker = _start(command, url, str(marker))
    _wait_for_line(worker, "running")
    worker.send_signal(signal.SIGTERM)
    code, output = _finish(worker)
    assert code == 128 + signal.SIGTERM, output


CANCELLED = ["Pending", "Running", "Cancelling", "Cancelled"]


def test_sigterm_cancels_the_run_with_its_cancellation_hooks(databases: Databases, tmp_path: Path) -> None:
    url, marker = databases.url("term"), tmp_path / "marker"
    _terminated("sleeper", url, marker)
    with SyncOrchestrator.open(url) as orch:
        run = _only(orch, "sleeper")
        assert [s.name for s in orch.read_states(run.id)] == CANCELLED
        assert run.state.message == "Flow run was cancelled."
        assert marker.read_text() == f"CANCELLING {run.id}"


def test_sigterm_cancels_an_async_flow_and_its_async_subflow_with_their_cancellation_hooks(
    databases: Databases, tmp_path: Path
) -> None:
    url, marker = databases.url("aterm"), tmp_path / "marker"
    _terminated("async-sleeper", url, marker)
    with SyncOrchestrator.open(url) as orch:
        for name in ("async-child", "async-parent"):
            assert [s.name for s in orch.read_states(_only(orch, name).id)] == CANCELLED, name
    assert marker.read_text().splitlines() == ["async-child CANCELLING", "async-parent CANCELLING"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_sigterm_during_the_call_that_creates_a_subflow_cancels_the_subflow_too(
    databases: Databases, mode: str
) -> None:
    """The subflow was written Running, but the signal ended its call before the
    engine knew the run: nobody recorded its end, and it stayed Running for ever."""
    url = databases.url("term_in_call")
    code, output = _finish(_start("term-in-call", url, mode))
    assert code == 128 + signal.SIGTERM, output
    with SyncOrchestrator.open(url) as orch:
        for name in ("term-child", "term-parent"):
            assert [s.name for s in orch.read_states(_only(orch, name).id)] == CANCELLED, name


def test_sigterm_during_the_creation_of_subflows_gathered_side_by_side_cancels_each_of_them(
    databases: Databases,
) -> None:
    """The parent's cancellation reaches its subflows, each in a task of its own,
    while the second one's creation is under way: cut off there, that subflow stayed
    Running for ever; and `asyncio.gather` returns at its first child ended, so the
    block must not close the log before the others have recorded their end."""
    url = databases.url("term_gathered")
    code, output = _finish(_start("term-in-call", url, "gathered"))
    assert code == 128 + signal.SIGTERM, output
    with SyncOrchestrator.open(url) as orch:
        children = orch.read_flow_runs(flow_names=["term-child"])
        assert len(children) == 3
        for run in [*children, _only(orch, "term-parent")]:
            assert [s.name for s in orch.read_states(run.id)] == CANCELLED, run.flow_name


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_ctrl_c_during_the_call_that_creates_a_subflow_crashes_the_subflow_too(
    databases: Databases, mode: str
) -> None:
    """As with SIGTERM: the subflow was written Running, but KeyboardInterrupt ended its
    call before the engine knew the run, and it stayed Running for ever."""
    url = databases.url("int_in_call")
    code, output = _finish(_start("term-in-call", url, mode, "INT"))
    assert code == -signal.SIGINT, output  # Python ends on Ctrl-C by SIGINT's own action
    with SyncOrchestrator.open(url) as orch:
        for name in ("term-child", "term-parent"):
            last = orch.read_states(_only(orch, name).id)[-1]
            assert (last.name, last.message) == (
                "Crashed",
                "Execution was aborted by an interrupt signal.",
            ), name


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_second_ctrl_c_stops_a_flow_held_in_a_call_that_hangs(databases: Databases, mode: str) -> None:
    """The first Ctrl-C waits for the call to end; whoever presses it again wants out."""
    worker = _start("slow-call", databases.url("twice"), mode)
    _wait_for_line(worker, "in call")
    started = time.monotonic()
    worker.send_signal(signal.SIGINT)
    code, output = _finish(worker)
    assert code == -signal.SIGINT, output
    assert time.monotonic() - started < 20  # not the call's minute


def test_a_second_sigterm_during_the_cancellation_is_absorbed(databases: Databases, tmp_path: Path) -> None:
    """Raised in the middle of the cancellation, it left the run Cancelling for ever."""
    url, marker = databases.url("term_twice"), tmp_path / "marker"
    worker = _start("slow-cancel", url, str(marker))
    _wait_for_line(worker, "running")
    worker.send_signal(signal.SIGTERM)
    _wait_for_line(worker, "hook")
    worker.send_signal(signal.SIGTERM)
    code, output = _finish(worker)
    assert code == 128 + signal.SIGTERM, output
    with SyncOrchestrator.open(url) as orch:
        run = _only(orch, "sleeper")
        assert [s.name for s in orch.read_states(run.id)] == CANCELLED
    assert marker.read_text() == f"CANCELLING {run.id}"


def test_a_process_forked_in_a_flow_gets_sigterms_default_action_and_its_pools_terminate(
    databases: Databases,
) -> None:
    """A pool's workers, sent SIGTERM by Pool.terminate on a busy machine before they
    ever ran, lost it and waited for work for ever (the pool with them)."""
    code, output = _finish(_start("pools", databases.url("pools")))
    assert code == 0, output
    assert "child: default unblocked; parent: unblocked" in output
    assert "pools done" in output


def test_a_timeout_interrupts_a_sleeping_sync_flow_in_its_own_process(databases: Databases) -> None:
    url = databases.url("timeout")
    started = time.monotonic()
    code, output = _finish(_start("timeout", url))
    assert code == 0, output
    assert "timed out" in output
    assert time.monotonic() - started < 10
    with SyncOrchestrator.open(url) as orch:
        assert _only(orch, "timed-out").state.name == "TimedOut"


def test_a_restarted_parent_reattaches_to_its_running_child_instead_of_duplicating_it(
    databases: Databases, tmp_path: Path
) -> None:
    url = databases.url("restart")
    gate = tmp_path / "gate"
    first = _start("parent", url, env={"CHILD_GATE": str(gate)})
    _wait_for_line(first, "child running")
    first.send_signal(signal.SIGKILL)
    _finish(first)
    with SyncOrchestrator.open(url) as orch:
        parent_run = _only(orch, "parent")
        child_run = _only(orch, "child")
        assert child_run.state.type is StateType.RUNNING
    gate.touch()
    code, output = _finish(_start("parent", url, str(parent_run.id), env={"CHILD_GATE": str(gate)}))
    assert code == 0, output
    assert "result child done" in output
    with SyncOrchestrator.open(url) as orch:
        children = orch.read_flow_runs(flow_names=["child"])
        assert [c.id for c in children] == [child_run.id], "the child was re-attached, not duplicated"
        assert children[0].state.type is StateType.COMPLETED
        assert len(orch.read_task_runs(parent_run.id)) == 1
        assert orch.read_flow_run(parent_run.id).state.type is StateType.COMPLETED
        assert orch.verify().ok


def test_eight_processes_running_flows_on_one_log_leave_a_sound_log(databases: Databases) -> None:
    url = databases.url("eight")
    SyncOrchestrator.open(url).close()
    workers = [_start("pipeline", url, str(seed), "8") for seed in range(8)]
    for worker in workers:
        code, output = _finish(worker)
        assert code == 0, output
    with SyncOrchestrator.open(url) as orch:
        assert orch.verify().ok
        parents = orch.read_flow_runs(flow_names=["pipeline"], limit=None)
        assert len(parents) == 64
        assert {p.state.name for p in parents} == {"Completed"}
        children = [
            c
            for name in ("extract", "publish", "load")
            for c in orch.read_flow_runs(flow_names=[name], limit=None)
        ]
        assert len(children) == 64 * 3
        per_task = Counter(c.parent_task_run_id for c in children)
        assert set(per_task.values()) == {1}, "one subflow run per parent task run: none duplicated"
        assert {c.run_count for c in orch.read_flow_runs(flow_names=["extract"], limit=None)} == {2}
        runs = orch.read_flow_runs(limit=None)
        tasks = [t for run in runs for t in orch.read_task_runs(run.id)]
        orch.rebuild()
        assert orch.read_flow_runs(limit=None) == runs
        assert [t for run in runs for t in orch.read_task_runs(run.id)] == tasks


def test_a_child_forked_while_another_thread_runs_flows_runs_flows_of_its_own(tmp_path: Path) -> None:
    """The parent's open log is the parent's: SQLite connections must not cross a fork, and
    a lock another thread held at the fork stays held in the child forever."""
    url = f"sqlite:///{tmp_path / 'forks.db'}"
    worker = _start("forks", url, "10")
    code, output = _finish(worker)
    assert code == 0, output
    statuses = [line for line in output.splitlines() if line.lstrip("-").isdigit()]
    assert statuses == ["0"] * 10, output
    with SyncOrchestrator.open(url) as orch:
        children = [
            run
            for run in orch.read_flow_runs(flow_names=["forked"], limit=None)
            if run.parameters["index"] >= 1_000_000
        ]
        assert len(children) == 10
        assert all(run.state.type is StateType.COMPLETED for run in children)
        assert orch.verify().ok


def test_flows_called_by_a_pool_forked_in_a_flow_are_its_subflows_each_with_a_task_run_of_its_own(
    tmp_path: Path,
) -> None:
    """The children inherit the flow run's context, and with it its count of subflow
    keys: two children counting from the same number would give their calls one parent
    task run, and the second would return the first one's result as its own."""
    url = f"sqlite:///{tmp_path / 'fan-out.db'}"
    code, output = _finish(_start("fan-out", url))
    assert code == 0, output
    assert "[1, 4, 9, 16]" in output.splitlines(), output
    with SyncOrchestrator.open(url) as orch:
        parent = _only(orch, "fan-out")
        squares = orch.read_flow_runs(flow_names=["square"], limit=None)
        assert sorted(run.parameters["number"] for run in squares) == [1, 2, 3, 4]
        task_runs = {task.id: task for task in orch.read_task_runs(parent.id)}
        assert {run.parent_task_run_id for run in squares} == set(task_runs)
        assert len(task_runs) == 4
        assert all(re.fullmatch(r"square-[0-9a-f]{8}-[0-9]+", task.name) for task in task_runs.values())
        assert all(run.state.type is StateType.COMPLETED for run in squares)
        assert orch.verify().ok


def test_a_flow_called_in_a_process_forked_in_an_orchestrator_block_writes_to_its_log(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'in-block.db'}"
    code, output = _finish(_start("in-block", url))
    assert code == 0, output
    assert output.splitlines()[-1] == "0", output
    with SyncOrchestrator.open(url) as orch:
        run = _only(orch, "square")
        assert run.parameters == {"number": 5}
        assert run.state.type is StateType.COMPLETED


def test_a_flow_in_a_forked_child_refuses_its_parents_in_memory_log() -> None:
    """Its runs would go to the child's copy, which the parent never sees."""
    code, output = _finish(_start("fan-out", "sqlite:///:memory:"))
    assert code == 0, output
    (results,) = [line for line in output.splitlines() if line.startswith("[")]
    assert results.count("InvalidUrlError: an in-memory log is private") == 4, output


_INSTALLS_ITS_OWN_SIGTERM_HANDLER = """
import asyncio, os, signal
from flowtrail import flow
heard = []

@flow
async def installs() -> None:
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, lambda: heard.append("mine"))

async def main() -> None:
    await installs()
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.sleep(0.2)
    print(heard)

asyncio.run(main())
"""


def test_a_sigterm_handler_the_flows_code_puts_on_the_loop_outlives_the_flow(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _INSTALLS_ITS_OWN_SIGTERM_HANDLER],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "FLOWTRAIL_DATABASE_URL": f"sqlite:///{tmp_path}/log.db"},
    )
    assert (done.returncode, done.stdout.splitlines()[-1:]) == (0, ["['mine']"]), done.stderr


_TWO_FLOWS_GATHERED = """
import asyncio, sys
from flowtrail import flow

@flow
async def first() -> None:
    await asyncio.sleep(60)

@flow
async def second() -> None:
    await asyncio.sleep(60)

async def main() -> None:
    async def announce() -> None:
        await asyncio.sleep(0.5)
        print("running", flush=True)
    await asyncio.gather(first(), second(), announce(), return_exceptions=RETURN_EXCEPTIONS)

asyncio.run(main())
"""


@pytest.mark.parametrize("return_exceptions", [False, True])
def test_sigterm_cancels_every_outermost_async_flow_of_the_loop(
    tmp_path: Path, return_exceptions: bool
) -> None:
    """Two flows gathered at the top of a program: the first to start owned SIGTERM
    and was recorded Cancelled; the other was cancelled by asyncio.run's ending and
    recorded Crashed, or, gathered without return_exceptions, stopped in the middle of
    that when the first one's TerminationSignal ended asyncio.run, its log never closed:
    the process hung at exit. Both are cancelled now, and the process ends as SIGTERM
    says, with no traceback."""
    url = f"sqlite:///{tmp_path}/log.db"
    worker = subprocess.Popen(
        [sys.executable, "-c", _TWO_FLOWS_GATHERED.replace("RETURN_EXCEPTIONS", str(return_exceptions))],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "FLOWTRAIL_DATABASE_URL": url},
    )
    _wait_for_line(worker, "running")
    worker.send_signal(signal.SIGTERM)
    code, output = _finish(worker)
    assert code == 128 + signal.SIGTERM, output
    assert "Traceback" not in output
    with SyncOrchestrator.open(url) as orch:
        for name in ("first", "second"):
            assert [s.name for s in orch.read_states(_only(orch, name).id)] == CANCELLED, name
