"""Policies (ordered tuples of rules plus bookkeeping) and `decide`, the pure decision.

Every decision records the name and version of the policy that made it. A policy's
version changes whenever its rules or its bookkeeping change, and old versions stay
registered in `POLICIES`, so a log written years ago is re-checked against the rules it
was actually decided by.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from uuid import UUID

import msgspec

from flowtrail.core import common_rules, flow_rules, task_rules
from flowtrail.core.bookkeeping import FLOW_TRANSFORMS, TASK_TRANSFORMS
from flowtrail.core.errors import PolicyNotFoundError
from flowtrail.core.events import Decision, Facts, Proposal, RunKind, SetStateStatus
from flowtrail.core.fold import RunView, bookkeeping_of
from flowtrail.core.rules import ALL_STATES, Rule, Transform, Transition, Verdict, stamp
from flowtrail.core.states import StateType

__all__ = [
    "MIRROR_PROPOSER",
    "CoreFlowPolicy",
    "CoreTaskPolicy",
    "MarkLateRunsPolicy",
    "MinimalFlowPolicy",
    "MinimalTaskPolicy",
    "POLICIES",
    "Policy",
    "decide",
    "default_policy",
    "mirror_proposal",
    "policy_named",
]


@dataclass(frozen=True, slots=True)
class Policy:
    """A named, versioned, ordered set of rules and the bookkeeping that follows them."""

    name: str
    version: int
    kind: RunKind
    rules: tuple[Rule, ...]
    transforms: tuple[Transform, ...]
    # The rules that apply to each (from type, to type), in priority order, and the
    # transforms that can act on a state written there, in order: computed once.
    _table: Mapping[tuple[StateType | None, StateType], tuple[Rule, ...]] = field(
        init=False, repr=False, compare=False
    )
    _transform_table: Mapping[tuple[StateType | None, StateType], tuple[Transform, ...]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        pairs = [(source, target) for source in ALL_STATES for target in StateType]
        table = {pair: tuple(rule for rule in self.rules if rule.applies(*pair)) for pair in pairs}
        object.__setattr__(self, "_table", table)
        transforms = {pair: tuple(t for t in self.transforms if t.acts_on(*pair)) for pair in pairs}
        object.__setattr__(self, "_transform_table", transforms)

    def rules_for(self, source: StateType | None, target: StateType) -> tuple[Rule, ...]:
        """The rules that fire for a proposal from ``source`` to ``target``, in order."""
        return self._table[(source, target)]

    def transforms_for(self, source: StateType | None, written: StateType) -> tuple[Transform, ...]:
        """The transforms that can act when a run in ``source`` gets a state of type
        ``written``, in order; the others would give back what they were given."""
        return self._transform_table[(source, written)]


CoreFlowPolicy = Policy(
    "CoreFlowPolicy",
    1,
    RunKind.FLOW,
    (
        flow_rules.PreventDuplicateTransitions,
        flow_rules.HandleFlowTerminalStateTransitions,
        flow_rules.EnforceCancellingToCancelledTransition,
        flow_rules.BypassCancellingFlowRunsWithNoInfra,
        flow_rules.PreventPendingTransitions,
        flow_rules.EnsureOnlyScheduledFlowsMarkedLate,
        flow_rules.HandlePausingFlows,
        flow_rules.HandleResumingPausedFlows,
        common_rules.CopyScheduledTime,
        common_rules.WaitForScheduledTime,
        flow_rules.RetryFailedFlows,
    ),
    FLOW_TRANSFORMS,
)

#: Used for forced flow proposals: only the protections Prefect keeps under force.
MinimalFlowPolicy = Policy(
    "MinimalFlowPolicy",
    1,
    RunKind.FLOW,
    (flow_rules.PreventResultDataLoss, flow_rules.BypassCancellingFlowRunsWithNoInfra),
    FLOW_TRANSFORMS,
)

#: Used by the late-runs marker.
MarkLateRunsPolicy = Policy(
    "MarkLateRunsPolicy",
    1,
    RunKind.FLOW,
    (flow_rules.EnsureOnlyScheduledFlowsMarkedLate,),
    FLOW_TRANSFORMS,
)

CoreTaskPolicy = Policy(
    "CoreTaskPolicy",
    1,
    RunKind.TASK,
    (
        task_rules.HandleTaskTerminalStateTransitions,
        task_rules.PreventRunningTasksFromStoppedFlows,
        common_rules.CopyScheduledTime,
        common_rules.WaitForScheduledTime,
        task_rules.RetryFailedTasks,
        task_rules.RenameReruns,
        task_rules.UpdateFlowRunTrackerOnTasks,
        task_rules.CacheInsertion,
    ),
    TASK_TRANSFORMS,
)

#: Used for forced task proposals: Prefect's only rule here releases concurrency slots,
#: which flowtrail does not hold yet, so only the bookkeeping applies.
MinimalTaskPolicy = Policy("MinimalTaskPolicy", 1, RunKind.TASK, (), TASK_TRANSFORMS)

#: Every policy that ever decided, by (name, version).
POLICIES: Mapping[tuple[str, int], Policy] = {
    (p.name, p.version): p
    for p in (CoreFlowPolicy, MinimalFlowPolicy, MarkLateRunsPolicy, CoreTaskPolicy, MinimalTaskPolicy)
}


def policy_named(name: str, version: int) -> Policy:
    """The registered policy, or `PolicyNotFoundError`."""
    try:
        return POLICIES[(name, version)]
    except KeyError:
        raise PolicyNotFoundError(name, version) from None


def default_policy(kind: RunKind, force: bool) -> Policy:
    """The policy Prefect's API applies: the core one, or the minimal one under force."""
    if kind is RunKind.FLOW:
        return MinimalFlowPolicy if force else CoreFlowPolicy
    return MinimalTaskPolicy if force else CoreTaskPolicy


def decide(view: RunView, proposal: Proposal, facts: Facts, policy: Policy | None = None) -> Decision:
    """Decide ``proposal`` for the run in ``view``. Pure: same arguments, same decision.

    See `flowtrail.core.rules` for how the rules combine.
    """
    if policy is None:
        policy = default_policy(view.kind, proposal.force)
    now = proposal.proposed_at
    initial = view.state
    initial_type = initial.type if initial is not None else None
    proposed = stamp(proposal.state, now)
    target = proposed.type
    status, reason, delay, deciding = SetStateStatus.ACCEPT, None, None, None
    run = view
    current = proposed
    final_type: StateType | None = target
    # For each rule that fired: the transition type it leaves behind, and its verdict.
    fired: list[tuple[StateType | None, Verdict | None]] = []
    transition = Transition(initial, current, run, facts, now)
    for rule in policy.rules_for(initial_type, target):
        verdict = rule.before(transition)
        if verdict is None:
            fired.append((target, None))
            continue
        if verdict.effect is not None:
            run = verdict.effect(run)
        if verdict.status is None:
            if verdict.state is not None:
                current = verdict.state
        else:
            status, reason, deciding = verdict.status, verdict.reason, rule.name
            delay = verdict.delay_seconds
            if verdict.status is SetStateStatus.REJECT and verdict.state is not None:
                current = stamp(verdict.state, now)
                final_type = current.type
            else:
                final_type = None
        fired.append((final_type, verdict))
        if final_type != target:
            break  # the transition changed: the remaining rules no longer apply
        transition = Transition(initial, current, run, facts, now)

    if final_type != target and any(
        verdict is not None and verdict.effect is not None and left != final_type for left, verdict in fired
    ):
        # Rules that fired for the original transition fizzle: undo their effects by
        # replaying only the effects of the rules that still hold.
        run = view
        for left, verdict in fired:
            if left == final_type and verdict is not None and verdict.effect is not None:
                run = verdict.effect(run)
    if status is SetStateStatus.REJECT and final_type is None and initial is None:
        # Prefect cannot keep "the current state" of a run that has none: it aborts.
        status = SetStateStatus.ABORT

    written = None
    if final_type is not None:
        for transform in policy.transforms_for(initial_type, current.type):
            current, run = transform.apply(initial, current, run)
        written = current
    validated = written if written is not None else initial
    for left, verdict in reversed(fired):
        if left == final_type and verdict is not None and verdict.after is not None:
            run = verdict.after(run, validated)

    return Decision(
        status=status,
        policy=policy.name,
        policy_version=policy.version,
        bookkeeping=bookkeeping_of(run),
        state=written,
        rule=deciding,
        reason=reason,
        delay_seconds=delay,
    )


#: Who proposes the copy of a subflow's state onto its parent task run.
MIRROR_PROPOSER = "subflow-mirror"


def mirror_proposal(flow_run: RunView, decision: Decision, proposal: Proposal) -> Proposal | None:
    """Prefect's UpdateSubflowParentTask: the proposal to force onto the parent task run.

    When a subflow's state is written, the task run that stands for it in the parent
    flow takes a copy of that state, forced. The shell appends the two decisions in one
    transaction so neither is ever seen without the other.
    """
    parent: UUID | None = flow_run.parent_task_run_id
    if parent is None or decision.state is None:
        return None
    written = decision.state
    details = msgspec.structs.replace(written.state_details, child_flow_run_id=flow_run.id)
    return Proposal(
        state=msgspec.structs.replace(written, state_details=details),
        proposed_at=proposal.proposed_at,
        force=True,
        proposer=MIRROR_PROPOSER,
    )
