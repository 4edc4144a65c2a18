"""Carrying out the flow-run engine's effects: the sync driver and the async driver.

A sync flow is driven by plain calls on a `SyncOrchestrator` and runs its function in
the calling thread; an async flow is awaited on an `Orchestrator`. No event loop is
ever started behind a sync flow (async hooks of a sync flow excepted, which are run to
completion on one of their own).

While the outermost flow of a process runs on the main thread, SIGTERM cancels the run
(Cancelling, then Cancelled, with the cancellation hooks) and ends the process
(`flowtrail.engine.termination`).
"""

from __future__ import annotations

import asyncio
import atexit
import builtins
import concurrent.futures
import contextvars
import inspect
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any
from uuid import UUID

from flowtrail.core.errors import InvalidUrlError
from flowtrail.engine.checks import run_id_of
from flowtrail.engine.context import (
    Enclosing,
    FlowRunContext,
    current_flow_run,
    default_url,
    enclosing,
    flows_under_way,
    running,
)
from flowtrail.engine.flow_engine import (
    Call,
    EngineScript,
    FlowRunScript,
    Hooks,
    Invoke,
    Outcome,
    Sleep,
)
from flowtrail.engine.flows import Flow
from flowtrail.engine.logs import bound_contextvars, get_logger
from flowtrail.engine.orchestrator import Orchestrator, SyncOrchestrator
from flowtrail.engine.termination import (
    Holding,
    holding_here,
    raised_as_here,
    terminated,
    termination_cancels,
    termination_cancels_async,
)
from flowtrail.engine.timeouts import FlowTimeout, sync_timeout
from flowtrail.store.drivers import ToItsEnd

__all__ = ["call_async", "call_sync", "run_flow_run", "run_flow_run_async"]


# --- which orchestrator -------------------------------------------------------------------


class _Defaults:
    """Sync orchestrators opened for flows called outside any ``open(url)`` block, kept
    open for the process's later calls and closed when it exits."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.opened: dict[str, SyncOrchestrator] = {}

    def get(self, url: str) -> SyncOrchestrator:
        with self.lock:
            orchestrator = self.opened.get(url)
            if orchestrator is None:
                if not self.opened:
                    atexit.register(self.close)
                orchestrator = self.opened[url] = SyncOrchestrator.open(url, proposer="engine")
                orchestrator.url = url
            return orchestrator

    def close(self) -> None:
        with self.lock:
            for orchestrator in self.opened.values():
                orchestrator.close()
            self.opened.clear()

    def forget(self) -> None:
        """In a forked child: the parent's orchestrators stay the parent's, untouched (a
        SQLite connection must not be used across a fork, and a lock another thread held
        at the fork is held in the child forever); the child opens its own."""
        self.lock = threading.Lock()
        self.opened = {}


_defaults = _Defaults()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_defaults.forget)


def _shared_url(url: str, refusal: str) -> str:
    """``url``, for an orchestrator other than the one that opened it: an in-memory log
    cannot be shared so (``refusal`` says why, in this case)."""
    if url.rstrip("/").endswith(":memory:"):
        raise InvalidUrlError(f"an in-memory log is private to {refusal}")
    return url


def _twin_url(url: str) -> str:
    return _shared_url(
        url,
        "the orchestrator that opened it: call sync flows in a SyncOrchestrator block and async "
        "flows in an Orchestrator block, or use a file",
    )


def _forked(orchestrator: SyncOrchestrator | Orchestrator | None) -> bool:
    """Whether ``orchestrator`` is one a forked child inherited: its log refuses every
    call, and the child opens its own on the same URL."""
    return orchestrator is not None and orchestrator.store.forked


def _inherited(parent: FlowRunContext | None, around: Enclosing | None) -> bool:
    """Whether the orchestrator a flow here would use is one its process inherited (a
    forked child's): its log refuses every call, or is an in-memory copy of the parent's."""
    here = os.getpid()
    if parent is not None:
        return parent.pid != here or _forked(parent.orchestrator)
    return around is not None and around.pid != here


def _own_url(url: str) -> str:
    """The URL a forked child opens again for its flows."""
    return _shared_url(
        url,
        "the process that opened it: flows in a forked child cannot write to it (their runs "
        "would go to a copy the parent never sees); use a file",
    )


@contextmanager
def _sync_orchestrator(parent: FlowRunContext | None) -> Iterator[tuple[SyncOrchestrator, str]]:
    around = enclosing()
    inherited = _inherited(parent, around)
    if parent is not None and isinstance(parent.orchestrator, SyncOrchestrator) and not inherited:
        yield parent.orchestrator, parent.url
        return
    if parent is None and around is not None and around.sync is not None and not inherited:
        yield around.sync, around.url
        return
    url = parent.url if parent is not None else around.url if around is not None else None
    if url is None:
        url = default_url()
        yield _defaults.get(url), url
        return
    if inherited:
        yield _defaults.get(_own_url(url)), url
        return
    with SyncOrchestrator.open(_twin_url(url), proposer="engine") as twin:
        yield twin, url


@asynccontextmanager
async def _async_orchestrator(parent: FlowRunContext | None) -> AsyncIterator[tuple[Orchestrator, str]]:
    around = enclosing()
    inherited = _inherited(parent, around)
    if parent is not None and isinstance(parent.orchestrator, Orchestrator) and not inherited:
        async with _used(parent.orchestrator):
            yield parent.orchestrator, parent.url
        return
    if parent is None and around is not None and around.asynchronous is not None and not inherited:
        async with _used(around.asynchronous):
            yield around.asynchronous, around.url
        return
    url = parent.url if parent is not None else around.url if around is not None else default_url()
    if inherited:
        url = _own_url(url)
    elif parent is not None or around is not None:
        url = _twin_url(url)
    orchestrator = await Orchestrator.open(url, proposer="engine")
    orchestrator.url = url
    _opened_here.add(orchestrator)
    async with _used(orchestrator):
        yield orchestrator, url


#: The orchestrators the engine opened for an async flow (not an enclosing block's).
_opened_here: weakref.WeakSet[Orchestrator] = weakref.WeakSet()


@asynccontextmanager
async def _used(orchestrator: Orchestrator) -> AsyncIterator[None]:
    """A flow under way on ``orchestrator`` meanwhile. One the engine opened is closed
    as the last flow using it ends, which need not be the flow it was opened for: a
    subflow can outlive its parent (`FlowsUnderWay`)."""
    flows = flows_under_way(orchestrator)
    try:
        with flows.one():
            yield
    finally:
        if not flows.tasks and orchestrator in _opened_here:
            _opened_here.discard(orchestrator)
            await orchestrator.close()


# --- prints ---------------------------------------------------------------------------------------


_printing: contextvars.ContextVar[bool] = contextvars.ContextVar("flowtrail_log_prints", default=False)


class _Prints:
    """``print`` routed to the run's log while a flow with ``log_prints`` runs here."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.original = builtins.print

    def print(
        self,
        *values: object,
        sep: str | None = " ",
        end: str | None = "\n",
        file: Any = None,
        flush: bool = False,
    ) -> None:
        if _printing.get() and file in (None, sys.stdout):
            # The logger may print the line itself (structlog's default does, holding a
            # lock of its own): that print is the line's, not the flow's.
            token = _printing.set(False)
            try:
                get_logger("flowtrail.prints").info((sep if sep is not None else " ").join(map(str, values)))
            finally:
                _printing.reset(token)
        else:
            self.original(*values, sep=sep, end=end, file=file, flush=flush)

    @contextmanager
    def captured(self, enabled: bool) -> Iterator[None]:
        if not enabled:
            token = _printing.set(False)
            try:
                yield
            finally:
                _printing.reset(token)
            return
        with self.lock:
            if self.users == 0:
                self.original = builtins.print
                builtins.print = self.print
            self.users += 1
        token = _printing.set(True)
        try:
            yield
        finally:
            _printing.reset(token)
            with self.lock:
                self.users -= 1
                if self.users == 0:
                    builtins.print = self.original


_prints = _Prints()


def _call_scope(effect: Invoke, orchestrator: Any, url: str) -> Any:
    context = FlowRunContext(run=effect.run, url=url, orchestrator=orchestrator)
    return context, bound_contextvars(
        flow_run_id=str(effect.run.id), flow_name=effect.flow.name, flow_run_name=effect.run.name
    )


# --- sync -----------------------------------------------------------------------------------------


def _hooks_sync(effect: Hooks) -> None:
    if not effect.hooks:
        return  # most states have none: no context to bind
    with _run_bound(effect):
        for hook in effect.hooks:
            try:
                result = hook(effect.flow, effect.run, effect.state)
                if inspect.isawaitable(result):
                    _run_to_its_end(result)
            except Exception:
                _hook_failed(hook, effect)


def _run_bound(effect: Hooks) -> Any:
    """The run's names bound to the log lines of its hooks (a subflow's, not its parent's)."""
    return bound_contextvars(
        flow_run_id=str(effect.run.id), flow_name=effect.flow.name, flow_run_name=effect.run.name
    )


def _hook_failed(hook: Any, effect: Hooks) -> None:
    get_logger("flowtrail.flow_runs").exception(
        "a hook failed; the run goes on", hook=getattr(hook, "__name__", repr(hook)), state=effect.state.name
    )


def _run_to_its_end(awaitable: Any) -> Any:
    """Await an async hook of a sync flow: on an event loop of its own, in a thread of
    its own where this thread already runs one (a sync flow called from async code)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_awaited(awaitable))
    context = contextvars.copy_context()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="flowtrail-hook") as pool:
        return pool.submit(context.run, asyncio.run, _awaited(awaitable)).result()


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _invoke_sync(effect: Invoke, orchestrator: SyncOrchestrator, url: str) -> Any:
    flow = effect.flow
    args, kwargs = flow.call_arguments(effect.parameters)
    context, bound = _call_scope(effect, orchestrator, url)
    with (
        running(context),
        bound,
        _prints.captured(flow.log_prints),
        sync_timeout(flow.timeout_seconds, effect.token),
    ):
        return flow.fn(*args, **kwargs)


def drive_sync(script: EngineScript[Outcome], orchestrator: SyncOrchestrator, url: str) -> Outcome:
    """Run the engine script with plain calls."""
    reply: Any = None
    failure: BaseException | None = None
    holding = holding_here()
    # Signals and timeouts wait while the engine runs, and reach the flow where its own
    # code runs (the function, a sleep, the hooks) or at the script's next step: see
    # termination. Raised in a call, they cut it off after its commit.
    with holding.held():
        while True:
            try:
                effect = holding.step(script, reply, failure)
            except StopIteration as stop:
                outcome: Outcome = stop.value
                return outcome
            reply, failure = None, None
            try:
                match effect:
                    case Call(method, args, kwargs):
                        reply = getattr(orchestrator, method)(*args, **kwargs)
                    case Sleep(seconds):
                        with holding.released():
                            time.sleep(seconds)
                    case Invoke():
                        with holding.released():
                            reply = _invoke_sync(effect, orchestrator, url)
                    case Hooks():
                        with holding.released():
                            _hooks_sync(effect)
            except BaseException as exc:  # the script decides what a crash records
                failure = exc


def call_sync(
    flow: Flow[Any, Any], args: Sequence[Any], kwargs: Mapping[str, Any], return_state: bool
) -> Any:
    parameters = flow.bind(args, kwargs)
    parent = current_flow_run()
    with termination_cancels(parent), _sync_orchestrator(parent) as (orchestrator, url):
        outcome = drive_sync(FlowRunScript(flow, parameters, parent=parent).execute(), orchestrator, url)
    return outcome.result(return_state)


def run_flow_run(flow: Flow[Any, Any], run_id: UUID | str, *, return_state: bool = False) -> Any:
    """Run ``flow`` as an existing flow run (one created ahead, e.g. by a scheduler).

    The run's recorded parameters are the call's; its retry settings are filled from
    the flow where the run has none.
    """
    with termination_cancels(None), _sync_orchestrator(None) as (orchestrator, url):
        run = orchestrator.read_flow_run(run_id_of(run_id))
        script = FlowRunScript(flow, dict(run.parameters), adopt=run).execute()
        outcome = drive_sync(script, orchestrator, url)
    return outcome.result(return_state)


# --- async ----------------------------------------------------------------------------------------


async def _hooks_async(effect: Hooks) -> None:
    if not effect.hooks:
        return
    with _run_bound(effect):
        for hook in effect.hooks:
            try:
                result = hook(effect.flow, effect.run, effect.state)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                _hook_failed(hook, effect)


#: The timeouts of the async flows whose functions this task runs inside, outermost
#: first: (the timeout, the flow's token, its seconds).
_limits: contextvars.ContextVar[tuple[tuple[asyncio.Timeout, object, float], ...]] = contextvars.ContextVar(
    "flowtrail_async_limits", default=()
)


async def _invoke_async(effect: Invoke, orchestrator: Orchestrator, url: str) -> Any:
    flow = effect.flow
    args, kwargs = flow.call_arguments(effect.parameters)
    context, bound = _call_scope(effect, orchestrator, url)
    with running(context), bound, _prints.captured(flow.log_prints):
        if flow.timeout_seconds is None:
            return await flow.fn(*args, **kwargs)
        limit = asyncio.timeout(flow.timeout_seconds)
        inside = _limits.set((*_limits.get(), (limit, effect.token, flow.timeout_seconds)))
        try:
            async with limit:
                return await flow.fn(*args, **kwargs)
        except TimeoutError as exc:
            if limit.expired():
                raise FlowTimeout(effect.token, flow.timeout_seconds) from exc
            raise
        finally:
            _limits.reset(inside)


def _timed_out(exc: BaseException) -> FlowTimeout | None:
    """The timeout of an enclosing async flow, where ``exc`` is the cancellation it
    sent: a subflow stops with its parent (Failed), as under a sync flow's timeout,
    rather than crash as if cancelled by the runtime."""
    if isinstance(exc, asyncio.CancelledError):
        for limit, token, seconds in reversed(_limits.get()):
            if limit.expired():
                return FlowTimeout(token, seconds)
    return None


def _crash_cause(exc: BaseException, holding: Holding, *, absorbs: bool = True) -> BaseException | None:
    """What the script is told of ``exc``, raised by what the driver awaited: the
    signal, or the enclosing flow's timeout, that a cancellation stands for. None: a
    cancellation that came while a signal's end is being recorded is absorbed (where
    ``absorbs``: not a call's own failure), as a second SIGTERM is. `asyncio.run`,
    ending on the signal, cancels every task left, and subflows gathered side by side
    were still recording their end: cut off, they stayed Cancelling for ever."""
    signalled = terminated(exc)
    if signalled is not None:
        holding.delivered.add(signal.SIGINT if isinstance(signalled, KeyboardInterrupt) else signal.SIGTERM)
        return signalled
    if absorbs and isinstance(exc, asyncio.CancelledError) and holding.delivered:
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        return None
    return _timed_out(exc) or exc


async def _answered(call: Coroutine[Any, Any, Any], holding: Holding) -> Any:
    """The answer of an orchestrator call, awaited to its end even where the task is
    cancelled meanwhile (its caller gave up; a subflow run side by side with others,
    in a task of its own, lost its parent to a signal or a timeout; `asyncio.run`
    ended with the task still going). The cancellation is held and thrown into the
    script at its next step, with the answer: cut off after its commit, the call left
    the script not knowing what it wrote (a subflow created Running, left so for ever)."""
    answer = ToItsEnd(call)  # never cancelled: its caller must know what it wrote
    while True:
        try:
            return await asyncio.shield(answer)
        except asyncio.CancelledError as exc:
            if answer.cancelled():
                raise  # the call ended so itself: nothing of it to wait for
            if (cause := _crash_cause(exc, holding)) is not None:
                holding.take(cause)


async def drive_async(script: EngineScript[Outcome], orchestrator: Orchestrator, url: str) -> Outcome:
    """Run the engine script, awaiting each effect."""
    reply: Any = None
    failure: BaseException | None = None
    holding = holding_here()
    with holding.held():  # as in drive_sync
        while True:
            try:
                effect = holding.step(script, reply, failure)
            except StopIteration as stop:
                outcome: Outcome = stop.value
                return outcome
            reply, failure = None, None
            try:
                match effect:
                    case Call(method, args, kwargs):
                        reply = await _answered(getattr(orchestrator, method)(*args, **kwargs), holding)
                    case Sleep(seconds):
                        with holding.released():
                            await asyncio.sleep(seconds)
                    case Invoke():
                        with holding.released():
                            reply = await _invoke_async(effect, orchestrator, url)
                    case Hooks():
                        with holding.released():
                            await _hooks_async(effect)
            except BaseException as exc:  # the script decides what a crash records
                failure = _crash_cause(exc, holding, absorbs=not isinstance(effect, Call))


async def call_async(
    flow: Flow[Any, Any], args: Sequence[Any], kwargs: Mapping[str, Any], return_state: bool
) -> Any:
    parameters = flow.bind(args, kwargs)
    parent = current_flow_run()
    with termination_cancels_async(parent):
        async with (
            raised_as_here(outermost=parent is None),
            _async_orchestrator(parent) as (orchestrator, url),
        ):
            outcome = await drive_async(
                FlowRunScript(flow, parameters, parent=parent).execute(), orchestrator, url
            )
    return outcome.result(return_state)


async def run_flow_run_async(flow: Flow[Any, Any], run_id: UUID | str, *, return_state: bool = False) -> Any:
    """`run_flow_run` for async flows."""
    with termination_cancels_async(None):
        async with raised_as_here(outermost=True), _async_orchestrator(None) as (orchestrator, url):
            run = await orchestrator.read_flow_run(run_id_of(run_id))
            script = FlowRunScript(flow, dict(run.parameters), adopt=run).execute()
            outcome = await drive_async(script, orchestrator, url)
    return outcome.result(return_state)
