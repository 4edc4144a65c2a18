"""The public surface is deliberate: every exported name listed, sorted, importable."""

from __future__ import annotations

import importlib
import inspect
import re

import pytest

import flowtrail
from flowtrail import states

PUBLIC_MODULES = [
    "flowtrail",
    "flowtrail.core",
    "flowtrail.engine",
    "flowtrail.projections",
    "flowtrail.states",
    "flowtrail.store",
    "flowtrail.testing",
]

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
    assert {
        "Orchestrator",
        "SyncOrchestrator",
        "SetStateStatus",
        "StateType",
        "State",
        "StateDetails",
        "states",
        "FlowtrailError",
    } <= set(flowtrail.__all__)


def test_every_error_flowtrail_raises_can_be_imported_from_the_top_level_package() -> None:
    from flowtrail.core import errors

    for name in errors.__all__:
        assert getattr(flowtrail, name) is getattr(errors, name), name
        assert issubclass(getattr(flowtrail, name), flowtrail.FlowtrailError), name
    defined = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, errors.FlowtrailError) and not name.startswith("_")
    }
    assert defined <= set(errors.__all__)


def test_every_error_is_drawn_in_the_tree_of_the_errors_module() -> None:
    from flowtrail.core import errors

    assert errors.__doc__ is not None
    drawn = set(re.findall(r"\b(\w+Error)\b", errors.__doc__))
    assert set(errors.__all__) <= drawn


ORCHESTRATOR_METHODS = {
    "create_flow_run",
    "create_task_run",
    "propose_state",
    "read_flow_run",
    "read_task_run",
    "read_flow_runs",
    "find_subflow_run",
    "read_states",
    "read_history",
    "update_flow_run",
    "set_flow_run_name",
    "verify",
    "rebuild",
    "as_of",
    "close",
}


def test_both_orchestrators_have_the_same_methods() -> None:
    """DESIGN §8: the async Orchestrator and its SyncOrchestrator twin, same names."""
    public = {n for n in dir(flowtrail.Orchestrator) if not n.startswith("_") and n != "open"}
    twin = {n for n in dir(flowtrail.SyncOrchestrator) if not n.startswith("_") and n != "open"}
    assert public == twin
    assert public >= ORCHESTRATOR_METHODS


def test_the_orchestrators_keyword_arguments_match_design() -> None:
    for cls in (flowtrail.Orchestrator, flowtrail.SyncOrchestrator):
        create = inspect.signature(cls.create_flow_run).parameters
        assert {
            "parameters",
            "tags",
            "retries",
            "retry_delay",
            "parent_task_run_id",
            "deployment_id",
            "infrastructure_pid",
            "name",
            "state",
            "idempotency_key",
        } <= set(create)
        task = inspect.signature(cls.create_task_run).parameters
        assert {"task_key", "dynamic_key", "retries", "retry_delay", "state"} <= set(task)
        update = inspect.signature(cls.update_flow_run).parameters
        assert {"retries", "retry_delay", "infrastructure_pid", "flow_version"} <= set(update)
        assert list(inspect.signature(cls.propose_state).parameters)[:4] == [
            "self",
            "run_id",
            "state",
            "force",
        ]


@pytest.mark.parametrize(("name", "keywords"), CONSTRUCTOR_KEYWORDS.items())
def test_state_constructors_take_prefects_keywords(name: str, keywords: set[str]) -> None:
    parameters = inspect.signature(getattr(states, name)).parameters
    assert keywords | {"name", "message", "timestamp"} <= set(parameters)


def test_importing_flowtrail_configures_no_logging() -> None:
    import logging

    assert logging.getLogger().handlers == [] or all(
        type(h).__module__.startswith("_pytest") for h in logging.getLogger().handlers
    )
