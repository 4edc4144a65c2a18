"""Orchestrators in real processes: killed mid-proposal, mid-catch-up, rebuilt mid-append."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from uuid import UUID

import pytest

from flowtrail import SyncOrchestrator, states
from flowtrail.core import StateProposed, fold
from flowtrail.core.effects import Fetch, Script
from flowtrail.projections import DecisionStats
from tests.conftest import SOAK, Databases

ROOT = Path(__file__).parent.parent.parent


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.engine.workers", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_after_first_line(process: subprocess.Popen[str], rng: random.Random) -> list[str]:
    assert process.stdout is not None
    assert process.stderr is not None
    first = process.stdout.readline()
    if not first:
        raise AssertionError(process.stderr.read())
    time.sleep(rng.uniform(0, 0.05))
    process.send_signal(signal.SIGKILL)
    process.wait()
    rest = process.stdout.read()
    process.stdout.close()
    process.stderr.close()
    return (first + rest).split("\n")[:-1]


def _views_equal_rebuild(orch: SyncOrchestrator) -> None:
    runs = orch.read_flow_runs(limit=None)
    tasks = [t for run in runs for t in orch.read_task_runs(run.id)]
    orch.rebuild()
    assert orch.read_flow_runs(limit=None) == runs
    assert [t for run in runs for t in orch.read_task_runs(run.id)] == tasks
    for view in [*runs, *tasks]:
        assert fold(r.decode() for r in orch.store.read_stream(str(view.id))) == view


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_killed_proposers_lose_no_acknowledged_proposal(databases: Databases, mode: str) -> None:
    db = databases.url("proposals")
    SyncOrchestrator.open(db).close()
    rng = random.Random(len(mode))
    rounds = 200 if SOAK else 12
    for number in range(rounds):
        acks = [
            line.split() for line in _kill_after_first_line(_start("propose", db, mode, str(number)), rng)
        ]
        with SyncOrchestrator.open(db) as orch:
            for _, run_id, version, status in acks:
                history = orch.store.read_stream(run_id, int(version))
                assert history, f"round {number}: acknowledged version {version} of run {run_id} is lost"
                event = history[0].decode()
                assert isinstance(event, StateProposed)
                assert event.decision.status.value == status
            if number % 4 == 3 or number == rounds - 1:
                assert orch.verify().ok
                _views_equal_rebuild(orch)


def _count_decisions(orch: SyncOrchestrator) -> Counter[tuple[str, str, str]]:
    counts: Counter[tuple[str, str, str]] = Counter()
    for record in orch.store.read_all():
        event = record.decode()
        if isinstance(event, StateProposed):
            counts[(event.decision.policy, event.decision.rule or "", event.decision.status.value)] += 1
    return counts


def _stats(orch: SyncOrchestrator) -> Counter[tuple[str, str, str]]:
    def read() -> Script[Counter[tuple[str, str, str]]]:
        rows = yield Fetch("SELECT policy, rule, status, count FROM decision_stats")
        return Counter({(p, r, s): n for p, r, s, n in rows})

    return orch.store.perform(read())


def test_a_catch_up_projection_killed_mid_step_applies_every_event_exactly_once(databases: Databases) -> None:
    db = databases.url("catch_up")
    worker = _start("churn", db, "150")
    worker.communicate(timeout=120)
    rng = random.Random(3)
    for _ in range(8):
        _kill_after_first_line(_start("catch-up", db), rng)
    with SyncOrchestrator.open(db) as orch:
        orch.catch_up(DecisionStats())
        assert _stats(orch) == _count_decisions(orch)
        assert orch.catch_up(DecisionStats()) == 0


class _DecisionStatsV2(DecisionStats):
    version = DecisionStats.version + 1


def test_a_catch_up_projection_at_a_new_version_counts_every_event_once_from_the_start(
    databases: Databases,
) -> None:
    db = databases.url("new_version")
    _start("churn", db, "20").communicate(timeout=120)
    with SyncOrchestrator.open(db) as orch:
        orch.catch_up(DecisionStats())
        first = _stats(orch)
        assert orch.catch_up(_DecisionStatsV2()) == orch.last_position()
        assert _stats(orch) == first == _count_decisions(orch)
        assert orch.catch_up(_DecisionStatsV2()) == 0
        # Back to the first version: its rows are replaced again, not added to.
        orch.catch_up(DecisionStats())
        assert _stats(orch) == first


def test_views_rebuilt_while_another_process_appends_equal_the_fold(databases: Databases) -> None:
    db = databases.url("online")
    seed = _start("churn", db, "300")
    seed.communicate(timeout=120)
    with SyncOrchestrator.open(db) as orch:
        appender = _start("churn", db, "150")
        rebuilds = 0
        while appender.poll() is None:
            # Small chunks and a small cache: many windows for an append to race into.
            orch.rebuild(batch=40, cache_size=25)
            rebuilds += 1
        appender.communicate()
        assert appender.returncode == 0
        assert rebuilds >= 1
        runs = orch.read_flow_runs(limit=None)
        assert len(runs) == 450
        for view in runs:
            assert fold(r.decode() for r in orch.store.read_stream(str(view.id))) == view, view.id
        assert all(isinstance(v.id, UUID) for v in runs)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_many_processes_proposing_on_one_run_each_land_every_proposal(
    databases: Databases, mode: str
) -> None:
    db = databases.url("crowd")
    with SyncOrchestrator.open(db) as orch:
        run = orch.create_flow_run("crowd", state=states.Running())
    processes, proposers, count = 3, 5, 12
    crowd = [_start("crowd", db, str(run.id), mode, str(proposers), str(count)) for _ in range(processes)]
    answers = []
    for process in crowd:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        answers += out.splitlines()
    assert "gave up" not in answers
    versions = sorted(int(line.split()[1]) for line in answers)
    assert versions == list(range(3, 3 + processes * proposers * count))
    with SyncOrchestrator.open(db) as orch:
        assert orch.read_flow_run(run.id).run_count == 1 + processes * proposers * count
        assert orch.verify().ok
