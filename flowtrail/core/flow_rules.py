"""The flow-run rules of Prefect's CoreFlowPolicy, MinimalFlowPolicy and MarkLateRunsPolicy.

One function per rule, each followed by its `Rule` value; `flowtrail.core.policies`
orders them. Reasons are Prefect's own words, so that a log reads like Prefect's API
answers. Rules that need a deployment's concurrency slots are not here (flowtrail's first
version records deployments as a plain attribute, which the rules below read).
"""

from __future__ import annotations

from datetime import timedelta

import msgspec

from flowtrail.core.common_rules import retry_delay_for
from flowtrail.core.fold import RunView
from flowtrail.core.rules import (
    ALL_STATES,
    TERMINAL,
    Rule,
    Transition,
    Verdict,
    abort,
    after,
    change,
    modify,
    reject,
)
from flowtrail.core.states import AwaitingRetry, Cancelled, Failed, State, StateType

__all__ = [
    "BypassCancellingFlowRunsWithNoInfra",
    "EnforceCancellingToCancelledTransition",
    "EnsureOnlyScheduledFlowsMarkedLate",
    "HandleFlowTerminalStateTransitions",
    "HandlePausingFlows",
    "HandleResumingPausedFlows",
    "PreventDuplicateTransitions",
    "PreventPendingTransitions",
    "PreventResultDataLoss",
    "RetryFailedFlows",
    "has_persisted_result",
]

_S = StateType


def has_persisted_result(state: State) -> bool:
    """Prefect's ``_has_persisted_result``: data is a result record, not the marker."""
    data = state.data
    return isinstance(data, dict) and data.get("type") != "unpersisted"


def _with_policy(run: RunView, **changes: object) -> RunView:
    return msgspec.structs.replace(
        run, empirical_policy=msgspec.structs.replace(run.empirical_policy, **changes)
    )


def _reset_pauses(run: RunView, retry_type: str | None) -> RunView:
    return _with_policy(run, resuming=False, pause_keys=(), retry_type=retry_type)


# --- PreventDuplicateTransitions --------------------------------------------------------------


def _prevent_duplicate_transitions(t: Transition) -> Verdict | None:
    if t.initial is None:
        return None
    seen = t.initial.state_details.transition_id
    if seen is not None and seen == t.proposed.state_details.transition_id:
        return reject("This run has already made this state transition.")
    return None


PreventDuplicateTransitions = Rule(
    "PreventDuplicateTransitions",
    ALL_STATES,
    ALL_STATES,
    _prevent_duplicate_transitions,
    "A proposal carrying the current state's transition id is a retried request: keep the current state.",
)


# --- HandleFlowTerminalStateTransitions -------------------------------------------------------


def _handle_flow_terminal(t: Transition) -> Verdict | None:
    initial, proposed = t.initial, t.proposed
    if initial is None:
        return None
    if proposed.type in (_S.CANCELLING, _S.PAUSED, _S.CRASHED):
        return abort(f"Run is already in terminal state {initial.type.value}.")
    if initial.is_completed() and has_persisted_result(initial):
        if not proposed.is_final():
            return reject("Run is already COMPLETED.")
        if proposed.is_completed() and not has_persisted_result(proposed):
            return reject(
                "Cannot overwrite a COMPLETED state that carries persisted result data with one that does not."
            )
    if proposed.is_scheduled() and t.run.deployment_id is None:
        return abort("Cannot reschedule a run without an associated deployment.")
    if not proposed.is_final():
        # Leaving a terminal state is a manual retry: forget earlier pauses. run_count is
        # deliberately kept, as in Prefect.
        retry_type = "reschedule" if proposed.is_scheduled() else None
        return change(lambda run: _reset_pauses(run, retry_type))
    return None


HandleFlowTerminalStateTransitions = Rule(
    "HandleFlowTerminalStateTransitions",
    TERMINAL,
    ALL_STATES,
    _handle_flow_terminal,
    "A finished run cannot be paused, cancelled or crashed; a persisted COMPLETED result is kept; "
    "rescheduling needs a deployment; leaving a final state resets pause bookkeeping.",
)


# --- EnforceCancellingToCancelledTransition ---------------------------------------------------


def _enforce_cancelling_to_cancelled(t: Transition) -> Verdict | None:
    return reject("Cannot transition flows that are cancelling to a state other than Cancelled.")


EnforceCancellingToCancelledTransition = Rule(
    "EnforceCancellingToCancelledTransition",
    frozenset({_S.CANCELLING}),
    ALL_STATES - {_S.CANCELLED},
    _enforce_cancelling_to_cancelled,
    "A cancelling run may only become Cancelled.",
)


# --- BypassCancellingFlowRunsWithNoInfra ------------------------------------------------------


def _bypass_cancelling_without_infra(t: Transition) -> Verdict | None:
    initial = t.initial
    if initial is None:
        return None
    if (initial.type is _S.SCHEDULED and not t.run.infrastructure_pid) or initial.name == "Resuming":
        return reject("Scheduled flow run has no infrastructure to terminate.", Cancelled(timestamp=t.now))
    if initial.type is _S.PAUSED and initial.state_details.pause_reschedule:
        return reject("Suspended flow run has no infrastructure to terminate.", Cancelled(timestamp=t.now))
    return None


BypassCancellingFlowRunsWithNoInfra = Rule(
    "BypassCancellingFlowRunsWithNoInfra",
    frozenset({_S.SCHEDULED, _S.PAUSED}),
    frozenset({_S.CANCELLING}),
    _bypass_cancelling_without_infra,
    "Cancelling a run with no process to stop (scheduled without a pid, or suspended) cancels it at once.",
)


# --- PreventPendingTransitions ----------------------------------------------------------------


def _prevent_pending_transitions(t: Transition) -> Verdict | None:
    initial, proposed = t.initial, t.proposed
    if initial is None:
        return None
    if initial.type is _S.PENDING and proposed.name not in (initial.name, "Pending"):
        # A named sub-state (Pending -> Submitting -> InfrastructurePending) carries the
        # details earlier rules put on the Pending state.
        details = msgspec.structs.replace(
            proposed.state_details, scheduled_time=initial.state_details.scheduled_time
        )
        return modify(msgspec.structs.replace(proposed, state_details=details))
    return abort(f"This run is in a {initial.type.value} state and cannot transition to a PENDING state.")


PreventPendingTransitions = Rule(
    "PreventPendingTransitions",
    frozenset({_S.PENDING, _S.CANCELLING, _S.RUNNING, _S.CANCELLED}),
    frozenset({_S.PENDING}),
    _prevent_pending_transitions,
    "A second Pending means a second submission of the same run: abort it (named Pending sub-states pass).",
)


# --- EnsureOnlyScheduledFlowsMarkedLate -------------------------------------------------------


def _ensure_only_scheduled_marked_late(t: Transition) -> Verdict | None:
    initial = t.initial
    if initial is None or t.proposed.name != "Late":
        return None
    if initial.type is not _S.SCHEDULED:
        return reject("Only scheduled flows can be marked late.")
    if initial.name == "Late":
        return reject("This flow run is already marked late.")
    return None


EnsureOnlyScheduledFlowsMarkedLate = Rule(
    "EnsureOnlyScheduledFlowsMarkedLate",
    ALL_STATES,
    frozenset({_S.SCHEDULED}),
    _ensure_only_scheduled_marked_late,
    "Only a Scheduled run not yet marked Late can become Late.",
)


# --- HandlePausingFlows -----------------------------------------------------------------------


def _handle_pausing(t: Transition) -> Verdict | None:
    initial, proposed = t.initial, t.proposed
    verb = "suspend" if proposed.name == "Suspended" else "pause"
    if initial is None:
        return abort(f"Cannot {verb} flows with no state.")
    if not initial.is_running():
        return reject(f"Cannot {verb} flows that are not currently running.")
    # Prefect draws a uuid4 for a pause without a key; the orchestrator draws it
    # before deciding and records it as a fact.
    key = proposed.state_details.pause_key or t.facts.fresh_key or f"unkeyed-{t.now.isoformat()}"

    def remember_key(run: RunView, _validated: State | None) -> RunView:
        keys = run.empirical_policy.pause_keys
        return run if key in keys else _with_policy(run, pause_keys=(*keys, key))

    if key in t.run.empirical_policy.pause_keys:
        return reject(f"This {verb} has already fired.", after_hook=remember_key)
    if proposed.state_details.pause_reschedule:
        if t.run.parent_task_run_id is not None:
            return abort(f"Cannot {verb} subflows.", after_hook=remember_key)
        if t.run.deployment_id is None:
            return abort(f"Cannot {verb} flows without a deployment.", after_hook=remember_key)
    return after(remember_key)


HandlePausingFlows = Rule(
    "HandlePausingFlows",
    ALL_STATES,
    frozenset({_S.PAUSED}),
    _handle_pausing,
    "Only a running flow can pause, each pause key fires once, and only a deployed top-level flow can suspend.",
)


# --- HandleResumingPausedFlows ----------------------------------------------------------------


def _handle_resuming(t: Transition) -> Verdict | None:
    initial, proposed = t.initial, t.proposed
    if initial is None:
        return None
    blocking = not initial.state_details.pause_reschedule

    def mark_resuming(run: RunView, validated: State | None) -> RunView:
        if blocking and validated is not None and validated.is_scheduled():
            return _reset_pauses(run, "reschedule")
        return _with_policy(run, resuming=True)

    if not (
        proposed.is_running() or proposed.is_scheduled() or proposed.is_final() or proposed.is_cancelling()
    ):
        return reject(
            f"This run cannot transition to the {proposed.type.value} state from the {initial.type.value} state.",
            after_hook=mark_resuming,
        )
    display = (proposed.name or proposed.type.value).lower()
    if initial.state_details.pause_reschedule and t.run.deployment_id is None:
        return reject(
            f"Cannot reschedule a {display} flow run without a deployment.", after_hook=mark_resuming
        )
    if proposed.is_cancelling():
        # Cancelling a paused run is always allowed, even past its pause deadline.
        return after(mark_resuming)
    timeout = initial.state_details.pause_timeout
    if timeout is not None and timeout < t.now:
        verb = "suspend" if proposed.name == "Suspended" else "pause"
        failed = Failed(message=f"The flow was {display} and never resumed.", timestamp=t.now)
        return reject(
            f"The flow run {verb} has timed out and can no longer resume.", failed, after_hook=mark_resuming
        )
    return after(mark_resuming)


HandleResumingPausedFlows = Rule(
    "HandleResumingPausedFlows",
    frozenset({_S.PAUSED}),
    ALL_STATES,
    _handle_resuming,
    "A paused run resumes to Running, Scheduled, Cancelling or a final state, before its pause times out; "
    "a suspended run needs a deployment.",
)


# --- RetryFailedFlows -------------------------------------------------------------------------


def _retry_failed_flows(t: Transition) -> Verdict | None:
    if t.initial is None:
        return None
    policy = t.run.empirical_policy
    if policy.retries is None or t.run.run_count > policy.retries:
        # Clearing the retry type leaves room for a later manual retry.
        return change(lambda run: _with_policy(run, retry_type=None))
    delay = retry_delay_for(policy.retry_delay, t.run.run_count)
    retry = AwaitingRetry(
        scheduled_time=t.now + timedelta(seconds=delay),
        message=t.proposed.message,
        data=t.proposed.data,
        timestamp=t.now,
    )
    return reject("Retrying", retry, effect=lambda run: _reset_pauses(run, "in_process"))


RetryFailedFlows = Rule(
    "RetryFailedFlows",
    frozenset({_S.RUNNING}),
    frozenset({_S.FAILED}),
    _retry_failed_flows,
    "A failure with retries left becomes AwaitingRetry, scheduled after the retry delay.",
)


# --- PreventResultDataLoss (MinimalFlowPolicy: applies even to forced proposals) -----------


def _prevent_result_data_loss(t: Transition) -> Verdict | None:
    initial, proposed = t.initial, t.proposed
    if (
        initial is not None
        and initial.is_completed()
        and proposed.is_completed()
        and has_persisted_result(initial)
        and not has_persisted_result(proposed)
    ):
        return reject(
            "Cannot overwrite a COMPLETED state that carries persisted result data with one that does not."
        )
    return None


PreventResultDataLoss = Rule(
    "PreventResultDataLoss",
    TERMINAL,
    TERMINAL,
    _prevent_result_data_loss,
    "Even a forced proposal cannot replace a persisted COMPLETED result with one that has none.",
)
