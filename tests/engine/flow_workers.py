"""Flows run in their own processes by the engine's process tests.

python -m tests.engine.flow_workers sleeper URL MARKER
    A flow that sleeps; its cancellation hook writes MARKER.
python -m tests.engine.flow_workers slow-cancel URL MARKER
    A flow that sleeps; its cancellation hook prints "hook", takes a second, then
    writes MARKER.
python -m tests.engine.flow_workers slow-call URL sync|async
    A flow whose subflow's creation sends the process SIGINT, prints "in call", then
    takes 60 seconds before it returns (blocking the event loop, for an async flow).
python -m tests.engine.flow_workers async-sleeper URL MARKER
    An async flow whose async subflow sleeps; their cancellation hooks append to MARKER.
python -m tests.engine.flow_workers pools URL
    A flow that forks a process reporting what SIGTERM does there (and whether it is
    blocked), then starts and terminates a pool of two forked workers 30 times; print
    the report, then "pools done".
python -m tests.engine.flow_workers timeout URL
    A flow that outlives its 0.5 s timeout.
python -m tests.engine.flow_workers parent URL [RUN_ID]
    A parent whose subflow sleeps until the file named by CHILD_GATE exists;
    with RUN_ID, the parent run is adopted (a restart) instead of created.
python -m tests.engine.flow_workers pipeline URL SEED COUNT
    Run COUNT parent flows, each with three subflows (one failing once and retried,
    one failing for good), then print "done".
python -m tests.engine.flow_workers forks URL COUNT
    Run flows outside any orchestrator block (the process keeps one open), one thread
    running them without pause while the main thread forks COUNT children, one after
    another, that run a flow each; print each child's exit status.
python -m tests.engine.flow_workers fan-out URL
    A flow, called outside any orchestrator block, that squares 1..4 in subflows
    called by a pool of two forked processes; print the squares.
python -m tests.engine.flow_workers in-block URL
    In an orchestrator block, square 5 in a subflow-free flow called by a forked
    process; print its exit status.
python -m tests.engine.flow_workers term-in-call URL sync|async [INT]
    A flow whose subflow's creation is answered with SIGTERM (SIGINT with INT) already
    sent to the process: the signal arrives while the call that created the subflow is
    under way.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import structlog

from flowtrail import Orchestrator, SyncOrchestrator, flow
from flowtrail.core import FlowTimeoutError
from flowtrail.engine import run_flow_run


def _mark(path: str) -> Any:
    def hook(f: Any, run: Any, state: Any) -> None:
        Path(path).write_text(f"{state.type.value} {run.id}")

    return hook


def sleeper(url: str, marker: str) -> None:
    @flow(name="sleeper", on_cancellation=[_mark(marker)])
    def sleeper_flow() -> None:
        print("running", flush=True)
        time.sleep(60)

    with SyncOrchestrator.open(url):
        sleeper_flow()


def slow_cancel(url: str, marker: str) -> None:
    def hook(f: Any, run: Any, state: Any) -> None:
        print("hook", flush=True)
        time.sleep(1)
        _mark(marker)(f, run, state)

    @flow(name="sleeper", on_cancellation=[hook])
    def sleeper_flow() -> None:
        print("running", flush=True)
        time.sleep(60)

    with SyncOrchestrator.open(url):
        sleeper_flow()


def _slow_during_creation(create: Any) -> Any:
    """``create_flow_run`` that, creating a subflow, sends the process SIGINT, then
    takes a minute before it returns (a call hung on a lock, a server)."""

    def created(self: Any, flow_name: str, **kwargs: Any) -> Any:
        run = create(self, flow_name, **kwargs)
        if flow_name == "term-child":
            os.kill(os.getpid(), signal.SIGINT)
            print("in call", flush=True)
            time.sleep(60)
        return run

    async def created_async(self: Any, flow_name: str, **kwargs: Any) -> Any:
        run = await create(self, flow_name, **kwargs)
        if flow_name == "term-child":
            os.kill(os.getpid(), signal.SIGINT)
            await asyncio.sleep(0.1)  # the first Ctrl-C is taken in
            print("in call", flush=True)
            time.sleep(60)  # the loop blocked, as by a call that hangs
        return run

    return created_async if asyncio.iscoroutinefunction(create) else created


def async_sleeper(url: str, marker: str) -> None:
    def hook(f: Any, run: Any, state: Any) -> None:
        with open(marker, "a") as out:
            out.write(f"{f.name} {state.type.value}\n")

    @flow(name="async-child", on_cancellation=[hook], on_crashed=[hook])
    async def child() -> None:
        print("running", flush=True)
        await asyncio.sleep(60)

    @flow(name="async-parent", on_cancellation=[hook], on_crashed=[hook])
    async def parent() -> None:
        await child()

    async def main() -> None:
        async with Orchestrator.open(url):
            await parent()

    asyncio.run(main())


def _sigterm_here(out: Any) -> None:
    blocked = signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    out.send(
        f"{'default' if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL else 'handled'} "
        f"{'blocked' if blocked else 'unblocked'}"
    )


def pools(url: str) -> None:
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())
    fork = multiprocessing.get_context("fork")

    @flow(name="pools")
    def starting_pools() -> str:
        reader, writer = fork.Pipe(duplex=False)
        child = fork.Process(target=_sigterm_here, args=(writer,))
        child.start()
        report = reader.recv()
        child.join()
        blocked = signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, [])
        for _ in range(30):
            with fork.Pool(2) as pool:  # its __exit__ sends each worker SIGTERM
                pool.map(abs, [-1, -2, -3, -4])
        return f"child: {report}; parent: {'blocked' if blocked else 'unblocked'}"

    with SyncOrchestrator.open(url):
        print(starting_pools(), flush=True)
    print("pools done", flush=True)


def timed_out(url: str) -> None:
    @flow(name="timed-out", timeout_seconds=0.5)
    def slow() -> None:
        time.sleep(30)

    with SyncOrchestrator.open(url):
        try:
            slow()
        except FlowTimeoutError:
            print("timed out", flush=True)


@flow(name="child")
def child() -> str:
    gate = Path(os.environ["CHILD_GATE"])
    print("child running", flush=True)
    while not gate.exists():
        time.sleep(0.05)
    return "child done"


@flow(name="parent")
def parent() -> str:
    return child()


def parent_run(url: str, run_id: str | None) -> None:
    with SyncOrchestrator.open(url):
        result = parent() if run_id is None else run_flow_run(parent, run_id)
    print(f"result {result}", flush=True)


@flow(name="extract", retries=1, retry_delay_seconds=0)
def extract(key: str) -> int:
    attempts = _ATTEMPTS.setdefault(key, [])
    attempts.append(1)
    if len(attempts) == 1:
        raise ConnectionError("the first attempt always fails")
    return len(key)


_ATTEMPTS: dict[str, list[int]] = {}


@flow(name="load")
def load(rows: int) -> int:
    return rows


@flow(name="publish")
def publish(rows: int) -> None:
    raise PermissionError(f"read-only: {rows}")


@flow(name="pipeline")
def pipeline(key: str) -> int:
    rows = extract(key)
    publish(rows, return_state=True)
    return load(rows)


def pipelines(url: str, seed: int, count: int) -> None:
    with SyncOrchestrator.open(url):
        for index in range(count):
            assert pipeline(f"{seed}-{index}") == len(f"{seed}-{index}")
    print("done", flush=True)


@flow(name="forked")
def forked(index: int) -> int:
    return index


def forks(url: str, count: int) -> None:
    # structlog's default printer takes a lock of its own for each line, which a fork
    # while another thread prints copies held; this is about the log, so lines are dropped.
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())
    os.environ["FLOWTRAIL_DATABASE_URL"] = url
    forked(-1)
    stop = threading.Event()

    def keep_running() -> None:
        index = 0
        while not stop.is_set():
            forked(index)
            index += 1

    runner = threading.Thread(target=keep_running)
    runner.start()
    try:
        for index in range(count):
            pid = os.fork()
            if pid == 0:  # the child: a flow of its own, or a status saying why not
                signal.alarm(10)
                try:
                    forked(1_000_000 + index)
                except BaseException:
                    os._exit(3)
                os._exit(0)
            _, status = os.waitpid(pid, 0)
            print(os.waitstatus_to_exitcode(status), flush=True)
    finally:
        stop.set()
        runner.join()


@flow(name="square")
def square(number: int) -> int:
    return number * number


def _square_or_error(number: int) -> int | str:
    try:
        return square(number)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


@flow(name="fan-out")
def fan_out(numbers: list[int]) -> list[int | str]:
    with multiprocessing.get_context("fork").Pool(2) as pool:
        return pool.map(_square_or_error, numbers)


def fan_out_in_forks(url: str) -> None:
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())
    os.environ["FLOWTRAIL_DATABASE_URL"] = url
    print(fan_out([1, 2, 3, 4]), flush=True)


def forked_in_block(url: str) -> None:
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())
    with SyncOrchestrator.open(url):
        child = multiprocessing.get_context("fork").Process(target=square, args=(5,))
        child.start()
        child.join(30)
        print(child.exitcode, flush=True)


def _terminated_during_creation(create: Any, signum: int, nth: int = 1) -> Any:
    """``create_flow_run`` that has the process sent ``signum`` before it returns the
    ``nth`` subflow (the first, for a sync one)."""
    children = itertools.count(1)

    def created(self: Any, flow_name: str, **kwargs: Any) -> Any:
        run = create(self, flow_name, **kwargs)
        if flow_name == "term-child":
            os.kill(os.getpid(), signum)
        return run

    async def created_async(self: Any, flow_name: str, **kwargs: Any) -> Any:
        run = await create(self, flow_name, **kwargs)
        if flow_name == "term-child" and next(children) == nth:
            os.kill(os.getpid(), signum)
            await asyncio.sleep(0.1)  # the loop takes the signal in before the call returns
        return run

    return created_async if asyncio.iscoroutinefunction(create) else created


def terminated_in_call(url: str, mode: str, signum: int = signal.SIGTERM, *, slow: bool = False) -> None:
    @flow(name="term-child")
    def child() -> None:
        time.sleep(60)

    @flow(name="term-parent")
    def parent() -> None:
        child()

    @flow(name="term-child")
    async def async_child() -> None:
        await asyncio.sleep(60)

    @flow(name="term-parent")
    async def async_parent() -> None:
        await async_child()

    @flow(name="term-parent")
    async def gathering_parent() -> None:
        await asyncio.gather(async_child(), async_child(), async_child())

    async def run_async() -> None:
        async with Orchestrator.open(url):
            await (gathering_parent() if mode == "gathered" else async_parent())

    if mode == "sync":
        SyncOrchestrator.create_flow_run = (  # type: ignore[method-assign]
            _slow_during_creation(SyncOrchestrator.create_flow_run)
            if slow
            else _terminated_during_creation(SyncOrchestrator.create_flow_run, signum)
        )
        with SyncOrchestrator.open(url):
            parent()
    else:
        Orchestrator.create_flow_run = (  # type: ignore[method-assign]
            _slow_during_creation(Orchestrator.create_flow_run)
            if slow
            else _terminated_during_creation(
                Orchestrator.create_flow_run, signum, 2 if mode == "gathered" else 1
            )
        )
        asyncio.run(run_async())


def main(argv: list[str]) -> None:
    command, url, *rest = argv
    if command == "sleeper":
        sleeper(url, rest[0])
    elif command == "async-sleeper":
        async_sleeper(url, rest[0])
    elif command == "pools":
        pools(url)
    elif command == "timeout":
        timed_out(url)
    elif command == "parent":
        parent_run(url, rest[0] if rest else None)
    elif command == "forks":
        forks(url, int(rest[0]))
    elif command == "fan-out":
        fan_out_in_forks(url)
    elif command == "in-block":
        forked_in_block(url)
    elif command == "slow-cancel":
        slow_cancel(url, rest[0])
    elif command == "slow-call":
        terminated_in_call(url, rest[0], signal.SIGINT, slow=True)
    elif command == "term-in-call":
        terminated_in_call(url, rest[0], signal.SIGINT if rest[1:] == ["INT"] else signal.SIGTERM)
    elif command == "pipeline":
        pipelines(url, int(rest[0]), int(rest[1]))
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv[1:])
