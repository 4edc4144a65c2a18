"""Worker processes for the orchestrator's crash, catch-up and online-rebuild tests.

python -m tests.engine.workers propose URL sync|async SEED
    Create runs and propose states forever; after each answer, print
    "ack RUN VERSION STATUS". Killed by the test.
python -m tests.engine.workers catch-up URL
    Bring DecisionStats up to date in small steps, printing "step N"; killed by the test.
python -m tests.engine.workers churn URL COUNT
    Create COUNT runs and take each through Pending, Running, Completed.
python -m tests.engine.workers crowd URL RUN sync|async PROPOSERS COUNT
    PROPOSERS threads (sync) or tasks (async) each propose Running COUNT times for the
    one run RUN; after each answer, print "ack VERSION STATUS", or "gave up" on a
    ContentionError.
"""

from __future__ import annotations

import asyncio
import random
import sys
import threading

from flowtrail import Orchestrator, SyncOrchestrator, states
from flowtrail.core import ContentionError
from flowtrail.engine.results import OrchestrationResult
from flowtrail.projections import DecisionStats

_SCRIPT = [states.Pending, states.Running, states.Failed, states.Running, states.Completed, states.Pending]


def _ack(result: OrchestrationResult) -> None:
    sys.stdout.write(f"ack {result.run.id} {result.run.version} {result.status.value}\n")
    sys.stdout.flush()


def propose_sync(url: str, seed: int) -> None:
    rng = random.Random(seed)
    with SyncOrchestrator.open(url) as orch:
        while True:
            run = orch.create_flow_run("crash", retries=rng.choice([None, 1]))
            for make in _SCRIPT[: rng.randint(1, len(_SCRIPT))]:
                _ack(orch.propose_state(run.id, make()))


async def propose_async(url: str, seed: int) -> None:
    async with Orchestrator.open(url) as orch:

        async def worker(index: int) -> None:
            rng = random.Random(seed * 100 + index)
            while True:
                run = await orch.create_flow_run("crash", retries=rng.choice([None, 1]))
                tracker = await orch.create_task_run(run.id, task_key="child")
                child = await orch.create_flow_run("child", parent_task_run_id=tracker.id)
                for target in (run, child):
                    for make in _SCRIPT[: rng.randint(1, len(_SCRIPT))]:
                        _ack(await orch.propose_state(target.id, make()))

        await asyncio.gather(*(worker(i) for i in range(8)))


def catch_up(url: str) -> None:
    with SyncOrchestrator.open(url) as orch:
        while True:
            done = orch.catch_up(DecisionStats(), batch=7)
            print(f"step {done}", flush=True)


def churn(url: str, count: int) -> None:
    with SyncOrchestrator.open(url, rebuild_stale=False) as orch:
        for _ in range(count):
            run = orch.create_flow_run("churn", state=states.Pending())
            orch.propose_state(run.id, states.Running())
            orch.propose_state(run.id, states.Completed())
    print("done", flush=True)


def _answer(result: OrchestrationResult | None) -> None:
    line = "gave up" if result is None else f"ack {result.run.version} {result.status.value}"
    sys.stdout.write(f"{line}\n")
    sys.stdout.flush()


def crowd_sync(url: str, run_id: str, proposers: int, count: int) -> None:
    with SyncOrchestrator.open(url, rebuild_stale=False) as orch:

        def propose() -> None:
            for _ in range(count):
                try:
                    _answer(orch.propose_state(run_id, states.Running()))
                except ContentionError:
                    _answer(None)

        threads = [threading.Thread(target=propose) for _ in range(proposers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


async def crowd_async(url: str, run_id: str, proposers: int, count: int) -> None:
    async with Orchestrator.open(url, rebuild_stale=False) as orch:

        async def propose() -> None:
            for _ in range(count):
                try:
                    _answer(await orch.propose_state(run_id, states.Running()))
                except ContentionError:
                    _answer(None)

        await asyncio.gather(*(propose() for _ in range(proposers)))


def main(argv: list[str]) -> None:
    command, url, *rest = argv
    if command == "propose":
        if rest[0] == "sync":
            propose_sync(url, int(rest[1]))
        else:
            asyncio.run(propose_async(url, int(rest[1])))
    elif command == "catch-up":
        catch_up(url)
    elif command == "churn":
        churn(url, int(rest[0]))
    elif command == "crowd":
        run_id, mode, proposers, count = rest
        if mode == "sync":
            crowd_sync(url, run_id, int(proposers), int(count))
        else:
            asyncio.run(crowd_async(url, run_id, int(proposers), int(count)))
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv[1:])
