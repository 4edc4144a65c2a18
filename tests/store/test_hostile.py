"""Hostile appends, generated: each is a typed error and writes nothing; hostile *data*
(any text at all) is stored and read back exactly."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowtrail.core import FlowtrailError
from flowtrail.store.api import StreamWrite
from tests.conftest import SOAK
from tests.store.builders import created, renamed
from tests.store.conftest import Log

_unprintable = st.characters(categories=["Cc", "Cf", "Cs", "Zl", "Zp"])
bad_ids = st.one_of(
    st.just(""),
    st.text(min_size=257, max_size=300),
    st.builds(lambda a, c, b: a + c + b, st.text(max_size=5), _unprintable, st.text(max_size=5)),
    st.integers(),
    st.none(),
    st.binary(max_size=8),
)
bad_versions = st.one_of(
    st.integers(max_value=-1),
    st.integers(min_value=2**53 + 1),
    st.floats(),
    st.text(max_size=3),
    st.booleans(),
)
bad_parameters = st.one_of(
    st.sampled_from([float("nan"), float("inf"), float("-inf")]),
    st.sets(st.integers(), min_size=1, max_size=3),
    st.tuples(st.integers()),
    st.builds(object),
    st.dictionaries(st.integers(), st.integers(), min_size=1, max_size=2),
    st.binary(min_size=1, max_size=4),
)


@st.composite
def hostile_appends(draw: st.DrawFn) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    run_id = uuid4()
    good = (str(run_id), [created(run_id)], 0)
    kind = draw(st.sampled_from(["id", "version", "parameters", "events", "key", "size", "many"]))
    if kind == "id":
        return "append", (draw(bad_ids), [created(run_id)], 0), {}
    if kind == "version":
        return "append", (good[0], good[1], draw(bad_versions)), {}
    if kind == "parameters":
        event = created(run_id, parameters={"p": {"nested": [draw(bad_parameters)]}})
        return "append", (good[0], [event], 0), {}
    if kind == "events":
        events = draw(
            st.sampled_from([[], [object()], [created()], [renamed(uuid4())], "not a list of events"])
        )
        return "append", (good[0], events, 0), {}
    if kind == "key":
        key = draw(
            st.one_of(st.just(""), st.text(min_size=513, max_size=520), st.integers(), _unprintable.map(str))
        )
        return "append", good, {"idempotency_key": key}
    if kind == "size":
        blob = "x" * draw(st.integers(1024 * 1024, 1024 * 1024 + 4096))
        return "append", (good[0], [created(run_id, parameters={"blob": blob})], 0), {}
    write = StreamWrite(good[0], good[1], 0)
    return "append_many", (draw(st.sampled_from([[], [write, write], [write, StreamWrite("", [], 0)]])),), {}


@settings(
    max_examples=10_000 if SOAK else 1_000,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    deadline=None,
)
@given(call=hostile_appends())
def test_a_hostile_append_is_a_typed_error_and_writes_nothing(
    log: Log, call: tuple[str, tuple[Any, ...], dict[str, Any]]
) -> None:
    name, args, kwargs = call
    before = log.last_position()
    try:
        getattr(log, name)(*args, **kwargs)
    except FlowtrailError:
        pass
    else:
        raise AssertionError(f"{name}{args!r:.200} was accepted")
    assert log.last_position() == before


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(text=st.text(st.characters(exclude_categories=["Cs"])))
def test_any_text_is_stored_and_read_back_exactly(log: Log, text: str) -> None:
    run_id = uuid4()
    event = created(run_id, name=text, parameters={text: [text, {text: text}]}, tags=(text,))
    log.append(str(run_id), [event], 0)
    (record,) = log.read_stream(str(run_id))
    assert record.decode() == event
