"""The public surface is deliberate: every exported name listed, sorted, importable."""

from __future__ import annotations

import importlib
import inspect

import pytest

import flowtrail
from flowtrail import states

PUBLIC_MODULES = ["flowtrail", "flowtrail.core", "flowtrail.states", "flowtrail.store", "flowtrail.testing"]

# The constructors of DESIGN §8 and the keywords each takes, as in prefect.states.
CONSTRUCTOR_KEYWORDS = {
    "Scheduled": {"scheduled_time", "name"},
    "Late": {"scheduled_time"},
    "AwaitingRetry": {"scheduled_time"},
    "Pending": set(),
    "Running": set(),
    "Retrying": set(),
    "Completed": {"data", "message"},
    "Failed": {"message", "data"},
    "TimedOut": {"message"},
    "Crashed": {"message"},
    "Cancelling": set(),
    "Cancelled": set(),
    "Paused": {"timeout_seconds", "pause_expiration_time", "reschedule", "pause_key"},
    "Suspended": {"timeout_seconds", "pause_expiration_time", "pause_key"},
    "NotReady": set(),
}


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_all_is_sorted_and_every_name_exists(module_name: str) -> None:
    module = importlib.import_module(module_name)
    exported = list(module.__all__)
    assert exported == sorted(exported)
    for name in exported:
        assert hasattr(module, name), f"{module_name}.{name}"


def test_the_top_level_package_exports_the_contract() -> None:
    assert {"SetStateStatus", "StateType", "State", "StateDetails", "states", "FlowtrailError"} <= set(
        flowtrail.__all__
    )


@pytest.mark.parametrize(("name", "keywords"), CONSTRUCTOR_KEYWORDS.items())
def test_state_constructors_take_prefects_keywords(name: str, keywords: set[str]) -> None:
    parameters = inspect.signature(getattr(states, name)).parameters
    assert keywords | {"name", "message", "timestamp"} <= set(parameters)


def test_importing_flowtrail_configures_no_logging() -> None:
    import logging

    assert logging.getLogger().handlers == [] or all(
        type(h).__module__.startswith("_pytest") for h in logging.getLogger().handlers
    )
