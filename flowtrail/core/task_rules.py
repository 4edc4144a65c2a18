"""The task-run rules of Prefect's CoreTaskPolicy.

Prefect 3 sets task states on the client without these rules; flowtrail runs every task
proposal through them, so a task's history is checked like a flow's. The enclosing flow
run is read from the recorded `FlowRunFacts`, never looked up while deciding.
"""

from __future__ import annotations

import math
from datetime import timedelta

import msgspec

from flowtrail.core.common_rules import retry_delay_for
from flowtrail.core.fold import RunView
from flowtrail.core.rules import ALL_STATES, TERMINAL, Rule, Transition, Verdict, abort, after, modify, reject
from flowtrail.core.states import AwaitingRetry, Paused, State, StateType

__all__ = [
    "CacheInsertion",
    "HandleTaskTerminalStateTransitions",
    "MAX_CACHE_KEY_LENGTH",
    "PreventRunningTasksFromStoppedFlows",
    "RenameReruns",
    "RetryFailedTasks",
    "UpdateFlowRunTrackerOnTasks",
    "clamped_poisson_interval",
]

_S = StateType

#: Prefect's ``tasks.max_cache_key_length`` default.
MAX_CACHE_KEY_LENGTH = 2000


def clamped_poisson_interval(average: float, clamping_factor: float, draw: float) -> float:
    """Prefect's jittered interval, with its random draw (uniform in [0, 1)) given.

    The interval is exponentially distributed around ``average``, clamped above at
    ``average * (1 + clamping_factor)`` and below where the mean stays ``average``.
    """
    if clamping_factor <= 0 or average <= 0:
        return average
    upper_multiple = 1 + clamping_factor
    lower_multiple = 0.0 if upper_multiple >= 50 else math.log(2**upper_multiple / (2**upper_multiple - 1), 2)
    upper_rv = 1 - math.exp(-upper_multiple)
    lower_rv = 1 - math.exp(-max(0.0, lower_multiple))
    sample = lower_rv + (upper_rv - lower_rv) * draw
    return -math.log(max(1 - sample, 1e-10)) * average


def _persisted(state: State) -> bool:
    # Prefect's task rule reads ``data.get("type")``, which raises (and aborts the
    # proposal) for truthy data that is not a dict. flowtrail counts any such data as a
    # persisted result instead: it is data the run produced, and it should be kept.
    data = state.data
    if not data:
        return False
    return not (isinstance(data, dict) and data.get("type") == "unpersisted")


def _reset_run_count(run: RunView) -> RunView:
    return msgspec.structs.replace(run, run_count=0)


# --- HandleTaskTerminalStateTransitions -------------------------------------------------------


def _handle_task_terminal(t: Transition) -> Verdict | None:
    initial, proposed = t.initial, t.proposed
    if initial is None:
        return None
    if proposed.type in (_S.CANCELLING, _S.PAUSED, _S.CRASHED):
        return abort(f"Run is already {initial.type.value}.")
    if initial.is_completed() and _persisted(initial):
        return reject("This run is already completed.")
    renamed: State | None = None
    flow = t.facts.flow_run
    if (
        proposed.is_running()
        and t.run.flow_run_id is not None
        and flow is not None
        and t.run.flow_run_run_count < flow.run_count
    ):
        renamed = msgspec.structs.replace(proposed, name="Retrying")
    # Leaving a final state resets run_count, which resets the task's retries.
    effect = None if proposed.is_final() else _reset_run_count
    if effect is None and renamed is None:
        return None
    return Verdict(state=renamed, effect=effect)


HandleTaskTerminalStateTransitions = Rule(
    "HandleTaskTerminalStateTransitions",
    TERMINAL,
    ALL_STATES,
    _handle_task_terminal,
    "A finished task cannot be paused, cancelled or crashed, nor leave a persisted COMPLETED result; "
    "leaving a final state resets run_count; rerunning in a retried flow is named Retrying.",
)


# --- PreventRunningTasksFromStoppedFlows ------------------------------------------------------


def _prevent_running_tasks_from_stopped_flows(t: Transition) -> Verdict | None:
    flow = t.facts.flow_run
    if t.run.flow_run_id is None or flow is None:
        return None
    if flow.state_type is _S.RUNNING:
        return None
    if flow.state_type is _S.PAUSED:
        paused = Paused(
            name="NotReady",
            pause_expiration_time=flow.pause_timeout,
            reschedule=flow.pause_reschedule,
            timestamp=t.now,
        )
        return reject(
            f"The flow is paused, new tasks can execute after resuming flow run: {flow.flow_run_id}.", paused
        )
    return abort("The enclosing flow must be running to begin task execution.")


PreventRunningTasksFromStoppedFlows = Rule(
    "PreventRunningTasksFromStoppedFlows",
    ALL_STATES,
    frozenset({_S.RUNNING}),
    _prevent_running_tasks_from_stopped_flows,
    "A task may only start while its flow is Running; a paused flow's tasks become Paused (NotReady).",
)


# --- RetryFailedTasks -------------------------------------------------------------------------


def _retry_failed_tasks(t: Transition) -> Verdict | None:
    if t.initial is None:
        return None
    policy = t.run.empirical_policy
    run_count = t.run.run_count
    delay = retry_delay_for(policy.retry_delay, run_count)
    if policy.retry_jitter_factor and delay > 0 and t.facts.random_draw is not None:
        delay = clamped_poisson_interval(delay, policy.retry_jitter_factor, t.facts.random_draw)
    if t.proposed.state_details.retriable is False:
        return None
    if policy.retries is not None and run_count <= policy.retries:
        retry = AwaitingRetry(
            scheduled_time=t.now + timedelta(seconds=delay),
            message=t.proposed.message,
            data=t.proposed.data,
            timestamp=t.now,
        )
        return reject("Retrying", retry)
    return None


RetryFailedTasks = Rule(
    "RetryFailedTasks",
    frozenset({_S.RUNNING}),
    frozenset({_S.FAILED}),
    _retry_failed_tasks,
    "A retriable task failure with retries left becomes AwaitingRetry after the (jittered) retry delay.",
)


# --- RenameReruns -----------------------------------------------------------------------------


def _rename_reruns(t: Transition) -> Verdict | None:
    if t.initial is None or t.run.run_count <= 0:
        return None
    name = "Retrying" if t.initial.name == "AwaitingRetry" else "Rerunning"
    return modify(msgspec.structs.replace(t.proposed, name=name))


RenameReruns = Rule(
    "RenameReruns",
    ALL_STATES,
    frozenset({_S.RUNNING}),
    _rename_reruns,
    "A task that has run before runs again as Retrying (after AwaitingRetry) or Rerunning.",
)


# --- UpdateFlowRunTrackerOnTasks --------------------------------------------------------------


def _update_flow_run_tracker(t: Transition) -> Verdict | None:
    flow = t.facts.flow_run
    if t.run.flow_run_id is None or flow is None:
        return None
    count = flow.run_count

    def track(run: RunView, _validated: State | None) -> RunView:
        return msgspec.structs.replace(run, flow_run_run_count=count)

    return after(track)


UpdateFlowRunTrackerOnTasks = Rule(
    "UpdateFlowRunTrackerOnTasks",
    ALL_STATES,
    frozenset({_S.RUNNING}),
    _update_flow_run_tracker,
    "A running task remembers which attempt of its flow run it belongs to.",
)


# --- CacheInsertion (its check on the key; the cache itself comes later) -------------------


def _cache_insertion(t: Transition) -> Verdict | None:
    key = t.proposed.state_details.cache_key
    if key is not None and len(key) > MAX_CACHE_KEY_LENGTH:
        # Prefect rejects *with the proposed state*: it is written all the same.
        return reject(
            f"Cache key exceeded maximum allowed length of {MAX_CACHE_KEY_LENGTH} characters.", t.proposed
        )
    return None


CacheInsertion = Rule(
    "CacheInsertion",
    ALL_STATES,
    frozenset({_S.COMPLETED}),
    _cache_insertion,
    "A cache key longer than 2000 characters is refused; the Completed state is still written.",
)
