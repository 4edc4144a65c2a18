"""Orchestration rules as values, and the pure machinery that applies them.

Prefect nests its rules as async context managers over a mutable context; the outcome
can be stated without either. For a proposal moving a run from type F to type T:

1. The policy's rules whose from-states hold F and to-states hold T fire in priority
   order. Each sees the run as earlier rules left it (``Transition.run``) and returns a
   `Verdict`: nothing, a change of the proposal (``modify``), a change to the run
   (``effect``), and/or a decision (``reject`` / ``wait`` / ``abort``).
2. Once a rule turns the proposal into a different type (or into nothing: a REJECT
   without a state, a WAIT, an ABORT), no later rule fires: in Prefect they are
   "invalid" because the transition is no longer the one they were built for.
3. A rule whose transition was changed by a later rule "fizzles": its effect on the run
   is undone (Prefect's ``cleanup``). The rule that changed it keeps its own effect.
4. If a state is to be written, the policy's bookkeeping transforms (Prefect's global
   policy) run over it in order.
5. Rules that did not fizzle then run their ``after`` hook, last rule first, seeing the
   state written (or the current one when nothing was written).

Everything a rule reads is in its `Transition`; the clock is the proposal's time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import msgspec

from flowtrail.core.events import Facts, SetStateStatus
from flowtrail.core.fold import RunView
from flowtrail.core.states import TERMINAL_STATES, State, StateType

__all__ = [
    "ALL_STATES",
    "After",
    "Effect",
    "Rule",
    "TERMINAL",
    "Transform",
    "Transition",
    "Verdict",
    "abort",
    "after",
    "arrived",
    "change",
    "modify",
    "reject",
    "stamp",
    "wait",
]

#: Every state type, and None for "the run has no state yet".
ALL_STATES: frozenset[StateType | None] = frozenset((*StateType, None))
TERMINAL: frozenset[StateType | None] = frozenset(TERMINAL_STATES)

#: A change to the run made while a rule fires; undone if the rule fizzles.
Effect = Callable[[RunView], RunView]
#: A change to the run after the state is written, given the state written (or the
#: current one when nothing was written).
After = Callable[[RunView, State | None], RunView]


class Transition(NamedTuple):
    """What a rule sees: the current state, the proposal as earlier rules left it, the
    run as earlier rules left it, the recorded outside facts, and the decision's time."""

    initial: State | None
    proposed: State
    run: RunView
    facts: Facts
    now: datetime


class Verdict(NamedTuple):
    """A rule's answer; build one with `reject`, `wait`, `abort`, `modify` or `change`."""

    status: SetStateStatus | None = None
    state: State | None = None
    reason: str | None = None
    delay_seconds: int | None = None
    effect: Effect | None = None
    after: After | None = None


def reject(
    reason: str, state: State | None = None, *, effect: Effect | None = None, after_hook: After | None = None
) -> Verdict:
    """REJECT: write ``state`` instead, or (``None``) keep the current state."""
    return Verdict(status=SetStateStatus.REJECT, state=state, reason=reason, effect=effect, after=after_hook)


def wait(seconds: int, reason: str) -> Verdict:
    """WAIT: nothing is written; the caller is told to try again in ``seconds``."""
    return Verdict(status=SetStateStatus.WAIT, reason=reason, delay_seconds=seconds)


def abort(reason: str, *, after_hook: After | None = None) -> Verdict:
    """ABORT: nothing is written and the caller must stop proposing."""
    return Verdict(status=SetStateStatus.ABORT, reason=reason, after=after_hook)


def modify(state: State) -> Verdict:
    """Let the proposal through, changed (a new name, copied details)."""
    return Verdict(state=state)


def change(effect: Effect) -> Verdict:
    """Let the proposal through, changing the run (undone if the rule fizzles)."""
    return Verdict(effect=effect)


def after(hook: After) -> Verdict:
    """Let the proposal through, and change the run once the state is written."""
    return Verdict(after=hook)


@dataclass(frozen=True, slots=True)
class Rule:
    """One orchestration rule: where it applies, what it does, and why (``doc``)."""

    name: str
    from_states: frozenset[StateType | None]
    to_states: frozenset[StateType | None]
    before: Callable[[Transition], Verdict | None]
    doc: str

    def applies(self, from_type: StateType | None, to_type: StateType | None) -> bool:
        return from_type in self.from_states and to_type in self.to_states


@dataclass(frozen=True, slots=True)
class Transform:
    """A bookkeeping step applied to every state that is written (Prefect's global
    policy): given the current state, the state to write and the run, the state and
    run after it.

    ``leaving`` and ``entering`` say where it can act: on a run leaving a state of a type
    in ``leaving`` or writing one of a type in ``entering``. Elsewhere ``apply`` gives
    back the state and run it was given, so a policy need not call it. By default it
    can act on every transition. A transform never changes the state's type.
    """

    name: str
    apply: Callable[[State | None, State, RunView], tuple[State, RunView]]
    doc: str
    leaving: frozenset[StateType | None] = ALL_STATES
    entering: frozenset[StateType | None] = frozenset()

    def acts_on(self, from_type: StateType | None, to_type: StateType) -> bool:
        return from_type in self.leaving or to_type in self.entering


def arrived(state: State, at: datetime) -> State:
    """The state as a proposal records it: dated ``at`` (its proposal's time), whatever
    timestamp it was built with, as Prefect's server dates a state when it arrives (its
    StateCreate carries no timestamp). A state built with `flowtrail.states` is dated
    when it is built: a Running re-proposed after a wait, or built long before, would
    otherwise be written earlier than the state before it, and its run's times reckoned
    from then. A SCHEDULED state without a ``scheduled_time`` keeps its own timestamp as
    the time it is scheduled for, as `stamp` reads it."""
    if state.timestamp is None:
        return stamp(state, at)
    if state.type is StateType.SCHEDULED and state.state_details.scheduled_time is None:
        details = msgspec.structs.replace(state.state_details, scheduled_time=state.timestamp)
        state = msgspec.structs.replace(state, state_details=details)
    return stamp(msgspec.structs.replace(state, timestamp=None), at)


def stamp(state: State, at: datetime) -> State:
    """The state as it will be recorded: timestamped, and SCHEDULED states timed.

    A state built without a timestamp takes the proposal's time; a SCHEDULED state
    without a ``scheduled_time`` is scheduled for its own timestamp (Prefect: now).
    """
    if state.timestamp is None:
        state = msgspec.structs.replace(state, timestamp=at)
    if state.type is StateType.SCHEDULED and state.state_details.scheduled_time is None:
        state = msgspec.structs.replace(
            state, state_details=msgspec.structs.replace(state.state_details, scheduled_time=state.timestamp)
        )
    return state
