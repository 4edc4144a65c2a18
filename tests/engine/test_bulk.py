"""The collector pause used by bulk replays restores the collector exactly."""

from __future__ import annotations

import gc

from flowtrail.engine.bulk import collector_paused


def test_the_collector_resumes_only_when_the_last_pause_ends() -> None:
    assert gc.isenabled()
    with collector_paused():
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off() -> None:
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_collector_resumes_after_an_error() -> None:
    try:
        with collector_paused():
            raise RuntimeError
    except RuntimeError:
        pass
    assert gc.isenabled()
