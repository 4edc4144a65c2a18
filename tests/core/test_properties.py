"""Properties of the fold and the policies, over random histories of many runs."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from uuid import UUID

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule

from flowtrail.core import (
    Decision,
    Facts,
    Proposal,
    RunKind,
    RunView,
    SetStateStatus,
    State,
    StateProposed,
    StateType,
    decide,
    evolve,
    fold,
    verify,
)
from flowtrail.testing import T0, MemoryLog, run_id_for
from tests.strategies import STATE_NAMES, state_details

DEPLOYMENT = run_id_for("deployment")


def _proposals() -> st.SearchStrategy[State]:
    return st.builds(
        State,
        type=st.sampled_from(list(StateType)),
        name=st.sampled_from(STATE_NAMES),
        message=st.none() | st.sampled_from(["boom", "ok"]),
        data=st.sampled_from(
            [None, {"type": "json", "value": 1}, {"type": "unpersisted", "python_type": "x"}]
        ),
        state_details=state_details(),
    )


class Histories(RuleBasedStateMachine):
    """Many runs, flows and tasks and subflows, driven by random proposals."""

    flows = Bundle("flows")
    tasks = Bundle("tasks")

    def __init__(self) -> None:
        super().__init__()
        self.log = MemoryLog()
        self.clock = T0
        self.last: tuple[RunView, Proposal, Facts, Decision, RunView] | None = None

    def tick(self, seconds: float) -> None:
        self.clock += timedelta(seconds=seconds)

    @initialize(target=flows)
    def first_flow(self) -> UUID:
        return self.log.create_flow_run("first", at=self.clock).id

    @rule(
        target=flows,
        retries=st.none() | st.integers(0, 3),
        deployed=st.booleans(),
        pid=st.none() | st.just("4242"),
    )
    def create_flow(self, retries: int | None, deployed: bool, pid: str | None) -> UUID:
        return self.log.create_flow_run(
            "flow",
            at=self.clock,
            retries=retries,
            retry_delay=0 if retries else None,
            deployment_id=DEPLOYMENT if deployed else None,
            infrastructure_pid=pid,
        ).id

    @rule(
        target=tasks, flow=flows, retries=st.none() | st.integers(0, 3), delay=st.sampled_from([0, 5, (1, 2)])
    )
    def create_task(self, flow: UUID, retries: int | None, delay: object) -> UUID:
        return self.log.create_task_run(
            flow,
            f"t{len(self.log.records)}",
            at=self.clock,
            retries=retries,
            retry_delay=delay,  # type: ignore[arg-type]
        ).id

    @rule(target=flows, parent=tasks)
    def create_subflow(self, parent: UUID) -> UUID:
        return self.log.create_flow_run("child", at=self.clock, parent_task_run_id=parent).id

    def _propose(self, run_id: UUID, state: State, force: bool, seconds: float) -> None:
        self.tick(seconds)
        before = self.log.view(run_id)
        count = len(self.log.records)
        decision = self.log.propose(
            run_id, state, at=self.clock, force=force, fresh_key="drawn", random_draw=0.5
        )
        recorded = self.log.records[count].decode()
        assert isinstance(recorded, StateProposed)
        self.last = (before, recorded.proposal, recorded.facts, decision, self.log.view(run_id))

    @rule(run=flows, state=_proposals(), force=st.booleans(), seconds=st.sampled_from([0, 0.5, 1, 30, 400]))
    def propose_flow(self, run: UUID, state: State, force: bool, seconds: float) -> None:
        self._propose(run, state, force, seconds)

    @rule(run=tasks, state=_proposals(), force=st.booleans(), seconds=st.sampled_from([0, 1, 30]))
    def propose_task(self, run: UUID, state: State, force: bool, seconds: float) -> None:
        self._propose(run, state, force, seconds)

    @rule(run=flows, seconds=st.sampled_from([0, 1, 30]))
    def run_flow(self, run: UUID, seconds: float) -> None:
        """Nudge flows towards Running, where most rules live."""
        self._propose(run, State(type=StateType.RUNNING), False, seconds)

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def the_same_inputs_give_the_same_decision(self) -> None:
        if self.last is not None:
            before, proposal, facts, decision, _ = self.last
            assert decide(before, proposal, facts) == decision

    @invariant()
    def a_decision_that_writes_nothing_keeps_the_state(self) -> None:
        if self.last is not None:
            before, _, _, decision, after = self.last
            if decision.state is None:
                assert decision.status is not SetStateStatus.ACCEPT
                assert after.state == before.state

    @invariant()
    def force_never_waits(self) -> None:
        if self.last is not None:
            _, proposal, _, decision, _ = self.last
            if proposal.force:
                assert decision.status is not SetStateStatus.WAIT

    @invariant()
    def the_touched_run_is_the_fold_of_its_stream(self) -> None:
        if self.last is not None:
            after = self.last[4]
            events = self.log.events_of(after.id)
            assert fold(events) == after
            half = len(events) // 2
            assert fold(events[half:], fold(events[:half])) == after
            assert after.run_count == _attempts(events, after.kind)

    def teardown(self) -> None:
        for run_id, view in self.log.views.items():
            events = self.log.events_of(run_id)
            assert fold(events) == view
            assert view.run_count == _attempts(events, view.kind)
        report = verify(self.log.records)
        assert report.ok, report.problems


def _attempts(events: list[object], kind: RunKind) -> int:
    """Attempts as Prefect counts them, from the history alone.

    Every Running state written is an attempt, except (flows) one written while the run
    is resuming from a pause, unless it is leaving a final state (which ends the resume);
    and (tasks) leaving a final state under the core policy starts counting afresh.
    """
    count = 0
    view: RunView | None = None
    for event in events:
        before = view
        view = evolve(view, event)  # type: ignore[arg-type]
        if not isinstance(event, StateProposed) or event.decision.state is None or before is None:
            continue
        written = event.decision.state
        left_final = before.state is not None and before.state.is_final() and not written.is_final()
        if kind is RunKind.TASK and left_final and event.decision.policy == "CoreTaskPolicy":
            count = 0
        resuming = (
            kind is RunKind.FLOW
            and before.empirical_policy.resuming
            and not (left_final and event.decision.policy == "CoreFlowPolicy")
        )
        if written.is_running() and not resuming:
            count += 1
    return count


TestHistories = Histories.TestCase
TestHistories.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


# --- determinism across processes ------------------------------------------------------------

_DECIDE_IN_CHILD = """
import sys, msgspec
from flowtrail.core import RunView, Proposal, Facts, decide
Case = tuple[RunView, Proposal, Facts]
cases = msgspec.json.decode(sys.stdin.buffer.read(), type=list[Case])
sys.stdout.buffer.write(msgspec.json.encode([decide(v, p, f) for v, p, f in cases]))
"""


@settings(max_examples=5)
@given(seed=st.integers(0, 2**32 - 1))
def test_decide_gives_the_same_decisions_in_a_fresh_process(seed: int) -> None:
    """Hash seeds, import order and caches of a new interpreter change nothing."""
    import random

    rng = random.Random(seed)
    log = MemoryLog()
    cases: list[tuple[RunView, Proposal, Facts]] = []
    flows = [log.create_flow_run(f"f{i}", retries=rng.choice([None, 1, 2])).id for i in range(3)]
    tasks = [
        log.create_task_run(rng.choice(flows), f"t{i}", retries=rng.choice([None, 1])).id for i in range(3)
    ]
    clock = T0
    for _ in range(60):
        clock += timedelta(seconds=rng.choice([0, 1, 20]))
        run_id = rng.choice(flows + tasks)
        state = State(type=rng.choice(list(StateType)), name=rng.choice(STATE_NAMES), timestamp=clock)
        view = log.view(run_id)
        proposal = Proposal(state=state, proposed_at=clock, force=rng.random() < 0.2)
        facts = log.facts_for(view, proposal, fresh_key="k")
        cases.append((view, proposal, facts))
        log.propose(run_id, state, at=clock, force=proposal.force, fresh_key="k")
    here = msgspec.json.encode([decide(v, p, f) for v, p, f in cases])
    child = subprocess.run(
        [sys.executable, "-c", _DECIDE_IN_CHILD],
        input=msgspec.json.encode(cases),
        capture_output=True,
        check=True,
        env={"PYTHONHASHSEED": str(seed % 4096), "PATH": ""},
    )
    assert json.loads(child.stdout) == json.loads(here)
    assert child.stdout == here
