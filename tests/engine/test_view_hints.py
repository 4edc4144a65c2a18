"""The views an append hands the run views stand in for a read only when they fit."""

from __future__ import annotations

from pathlib import Path

import msgspec

from flowtrail import SyncOrchestrator
from flowtrail.core import Facts, Proposal, StateProposed, decide, evolve
from flowtrail.core import states as pure
from flowtrail.store import StreamWrite
from tests.engine.conftest import Clock


def test_a_view_handed_at_another_version_is_ignored(tmp_path: Path) -> None:
    clock = Clock()
    with SyncOrchestrator.open(f"sqlite:///{tmp_path}/h.db", clock=clock) as orch:
        run = orch.create_flow_run("etl", state=pure.Pending())
        stale = msgspec.structs.replace(run, version=run.version - 1, name="not-the-stored-view")
        now = clock()
        proposal = Proposal(state=pure.Running(timestamp=now), proposed_at=now)
        decision = decide(run, proposal, Facts())
        event = StateProposed(run_id=run.id, proposal=proposal, facts=Facts(), decision=decision)
        orch.store.append_many([StreamWrite(str(run.id), [event], run.version)], known={str(run.id): stale})
        assert orch.read_flow_run(run.id) == evolve(run, event)


def test_a_view_handed_at_the_right_version_gives_the_same_row_as_a_read(tmp_path: Path) -> None:
    with SyncOrchestrator.open(f"sqlite:///{tmp_path}/h.db", clock=Clock()) as orch:
        run = orch.create_flow_run("etl", state=pure.Pending())
        orch.propose_state(run.id, pure.Running())
        handed = orch.read_flow_run(run.id)
        orch.rebuild()
        assert orch.read_flow_run(run.id) == handed
