"""``@flow``: a function whose calls are flow runs, with Prefect's options.

Calling a flow runs it (see `flowtrail.engine.flow_engine`) and returns its value, or
raises its exception; ``return_state=True`` returns the final `State` instead. An
async function gives an async flow: calling it returns a coroutine.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, Literal, ParamSpec, TypeVar, overload

import pydantic
import pydantic_core

from flowtrail.core.codec import encode_json
from flowtrail.core.errors import InvalidDataError, InvalidInputError, ParameterValidationError
from flowtrail.core.fold import RunView
from flowtrail.core.jsondata import check_json, describe_type
from flowtrail.core.states import State

__all__ = [
    "RESULT_LIMIT",
    "Flow",
    "Hook",
    "exception_data",
    "exception_text",
    "flow",
    "jsonable_parameters",
    "result_data",
]

P = ParamSpec("P")
R = TypeVar("R")

#: A hook: called with the flow, the run's view and the state it reached.
Hook = Callable[["Flow[Any, Any]", RunView, State], object]

#: Results larger than this (encoded) are not recorded in the Completed state.
RESULT_LIMIT = 64 * 1024


def result_data(value: object) -> dict[str, object]:
    """What a Completed state records of a return value: the value itself when it is
    JSON and small, else a marker saying it was not recorded (never a pickle)."""
    try:
        check_json(value)
        if len(encode_json(value)) <= RESULT_LIMIT:
            return {"type": "json", "value": value}
    except InvalidDataError:
        pass
    return {"type": "unpersisted", "python_type": describe_type(value)}


def is_recorded_data(data: object) -> bool:
    """Whether a state's data is already what a state records of a value or an
    exception (`result_data`, `exception_data`), not the value itself."""
    return isinstance(data, dict) and data.get("type") in ("json", "unpersisted", "exception")


#: The most of an exception's text a state records.
_EXCEPTION_TEXT = 2000


def exception_data(exc: BaseException) -> dict[str, object]:
    """What a Failed or Crashed state records of an exception."""
    return {"type": "exception", "exception_type": describe_type(exc), "message": exception_text(exc)}


def exception_text(exc: BaseException) -> str:
    """``str(exc)`` as a state records it: at most 2,000 characters, text UTF-8 can hold
    (a lone surrogate, from a file name os.listdir could not decode, is escaped), and
    never an error of its own (an exception whose ``__str__`` fails)."""
    try:
        text = str(exc)[:_EXCEPTION_TEXT]
    except Exception:
        return f"<{describe_type(exc)} whose str() failed>"
    return _utf8(text)


def _utf8(text: str) -> str:
    """``text`` with what UTF-8 cannot hold (lone surrogates) escaped."""
    return text if text.isascii() else text.encode("utf-8", "backslashreplace").decode("utf-8")


def jsonable_parameters(parameters: Mapping[str, Any]) -> dict[str, object]:
    """Parameters as the run records them: JSON as given, converted when pydantic can,
    else their repr (a run's parameters are for reading, not for calling again)."""
    recorded: dict[str, object] = {}
    for name, value in parameters.items():
        try:
            check_json(value)
            recorded[name] = value
            continue
        except InvalidDataError:
            pass
        try:
            converted = pydantic_core.to_jsonable_python(value)
            check_json(converted)
            recorded[name] = converted
        except Exception:  # a user's object may fail in any way: its repr stands for it
            recorded[name] = _shown(value)
    return recorded


def _shown(value: object) -> str:
    """``repr(value)`` in at most 1,000 characters, or its type's name where repr fails
    (a list nested too deep for it, a broken ``__repr__``)."""
    try:
        return _utf8(repr(value)[:1000])
    except Exception:
        return f"<{describe_type(value)}>"


def _check_seconds(option: str, value: object, *, positive: bool) -> None:
    if value is None:
        return
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or value < 0
        or (positive and value == 0)
    ):
        raise InvalidInputError(
            f"{option} is a number of seconds {'above' if positive else 'from'} 0, not {value!r}"
        )


def _hooks(hooks: Iterable[Hook] | None, what: str) -> tuple[Hook, ...]:
    chosen = tuple(hooks or ())
    for hook in chosen:
        if not callable(hook):
            raise InvalidInputError(f"{what} hooks must be callables, not {hook!r}")
    return chosen


class Flow(Generic[P, R]):
    """A function run as a flow; see `flow` for the options."""

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        version: str | None = None,
        retries: int | None = None,
        retry_delay_seconds: float | None = None,
        timeout_seconds: float | None = None,
        flow_run_name: str | Callable[[], str] | None = None,
        validate_parameters: bool = True,
        log_prints: bool = False,
        on_completion: Iterable[Hook] | None = None,
        on_failure: Iterable[Hook] | None = None,
        on_crashed: Iterable[Hook] | None = None,
        on_cancellation: Iterable[Hook] | None = None,
        on_running: Iterable[Hook] | None = None,
    ) -> None:
        if not callable(fn):
            raise InvalidInputError(f"a flow wraps a function, not {fn!r}")
        if retries is not None and (type(retries) is not int or retries < 0):
            raise InvalidInputError(f"retries is a whole number from 0, not {retries!r}")
        _check_seconds("retry_delay_seconds", retry_delay_seconds, positive=False)
        _check_seconds("timeout_seconds", timeout_seconds, positive=True)
        if flow_run_name is not None and not (isinstance(flow_run_name, str) or callable(flow_run_name)):
            raise InvalidInputError("flow_run_name is a template string or a callable returning a string")
        self.fn = fn
        self.name = name or fn.__name__.replace("_", "-")
        self.version = version
        self.retries = retries
        self.retry_delay_seconds = retry_delay_seconds
        self.timeout_seconds = timeout_seconds
        self.flow_run_name = flow_run_name
        self.should_validate_parameters = validate_parameters
        self.log_prints = log_prints
        self.on_completion_hooks = _hooks(on_completion, "on_completion")
        self.on_failure_hooks = _hooks(on_failure, "on_failure")
        self.on_crashed_hooks = _hooks(on_crashed, "on_crashed")
        self.on_cancellation_hooks = _hooks(on_cancellation, "on_cancellation")
        self.on_running_hooks = _hooks(on_running, "on_running")
        self.is_async = inspect.iscoroutinefunction(fn)
        #: Stable across processes, so a restarted parent finds the task runs of its subflows.
        self.task_key = f"{self.name}:{fn.__module__}.{fn.__qualname__}"
        self._signature = inspect.signature(fn)
        self._model: type[pydantic.BaseModel] | None = None
        self._fields: dict[str, str] = {}  # parameter name -> its field's name in the model
        functools.update_wrapper(self, fn)

    def __repr__(self) -> str:
        return f"Flow(name={self.name!r}, fn={self.fn.__qualname__})"

    # -- parameters --------------------------------------------------------------------------

    def bind(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The call's arguments by parameter name (defaults filled in)."""
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise ParameterValidationError(f"{self.name}: {exc}") from None
        bound.apply_defaults()
        return dict(bound.arguments)

    def _parameter_model(self) -> type[pydantic.BaseModel]:
        if self._model is None:
            try:
                hints = typing.get_type_hints(self.fn, include_extras=True)
            except Exception:  # unresolvable string annotations: validate what resolves
                hints = {}
            # Each field has a name of the model's own and the parameter's as its alias:
            # a parameter may be called anything pydantic keeps for itself (model_config,
            # model_extra, _private), and would otherwise configure the model or be lost.
            fields: dict[str, Any] = {}
            for index, (name, parameter) in enumerate(self._signature.parameters.items()):
                annotation: Any = hints.get(name, Any)
                if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
                    annotation = tuple.__class_getitem__((annotation, ...))
                elif parameter.kind is inspect.Parameter.VAR_KEYWORD:
                    annotation = dict.__class_getitem__((str, annotation))
                default = ... if parameter.default is inspect.Parameter.empty else parameter.default
                fields[f"p{index}"] = (annotation, pydantic.Field(default, alias=name))
                self._fields[name] = f"p{index}"
            self._model = pydantic.create_model(
                f"{self.fn.__name__}_parameters",
                __config__=pydantic.ConfigDict(arbitrary_types_allowed=True),
                **fields,
            )
        assert self._model is not None
        return self._model

    def _check_names(self, parameters: Mapping[str, Any]) -> None:
        """Prefect's SignatureMismatchError: a run made ahead (or recorded by another
        version of the flow) may name parameters the function does not take."""
        unknown = [name for name in parameters if name not in self._signature.parameters]
        if unknown:
            raise ParameterValidationError(
                f"{self.name} expects parameters {list(self._signature.parameters)} but was "
                f"provided with parameters {list(parameters)}"
            )

    def validate(self, parameters: Mapping[str, Any]) -> dict[str, Any]:
        """The parameters checked and converted to the signature's types (pydantic)."""
        self._check_names(parameters)
        model = self._parameter_model()
        try:
            validated = model.model_validate(dict(parameters))
        except pydantic.ValidationError as exc:
            raise ParameterValidationError(
                f"{exc.error_count()} invalid parameter(s) for {self.name}: {exc}"
            ) from exc
        return {name: getattr(validated, self._fields[name]) for name in parameters}

    def call_arguments(self, parameters: Mapping[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        """Positional and keyword arguments to call the function with (Prefect's
        parameters_to_args_kwargs): the arguments ``bind`` found, laid out again as the
        signature takes them, defaults filled in for any missing."""
        # Every parameter before an *args goes positionally, or the *args' values would
        # take its place (``total(first, *rest)`` given ``first`` by keyword and ``rest``
        # positionally gets two values for ``first``). BoundArguments does the layout;
        # the defaults close any gap that would end the positional part early.
        self._check_names(parameters)
        bound = inspect.BoundArguments(self._signature, dict(parameters))
        bound.apply_defaults()
        return list(bound.args), bound.kwargs

    def run_name(self, parameters: Mapping[str, Any]) -> str | None:
        """The flow run name from ``flow_run_name`` (template or callable), if set."""
        if self.flow_run_name is None:
            return None
        if callable(self.flow_run_name):
            name = self.flow_run_name()
            if not isinstance(name, str):
                raise TypeError(f"flow_run_name callable must return a string, not {type(name).__name__}")
            return name
        return self.flow_run_name.format(**parameters)

    def hooks_for(self, state: State) -> tuple[Hook, ...]:
        """The hooks Prefect's engine chooses for a state it reached."""
        if state.is_failed():
            return self.on_failure_hooks
        if state.is_completed():
            return self.on_completion_hooks
        if state.is_cancelling():
            return self.on_cancellation_hooks
        if state.is_crashed():
            return self.on_crashed_hooks
        if state.is_running():
            return self.on_running_hooks
        return ()

    # -- calling -----------------------------------------------------------------------------

    @overload
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R: ...

    @overload
    def __call__(self, *args: Any, return_state: Literal[True], **kwargs: Any) -> Any: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the flow; the value (or, with ``return_state=True``, the final State)."""
        from flowtrail.engine.flow_drivers import call_async, call_sync

        return_state = bool(kwargs.pop("return_state", False))
        if self.is_async:
            return call_async(self, args, kwargs, return_state)
        return call_sync(self, args, kwargs, return_state)

    def with_options(self, **options: Any) -> Flow[P, R]:
        """A copy of the flow with some options changed."""
        current = {
            "name": self.name,
            "version": self.version,
            "retries": self.retries,
            "retry_delay_seconds": self.retry_delay_seconds,
            "timeout_seconds": self.timeout_seconds,
            "flow_run_name": self.flow_run_name,
            "validate_parameters": self.should_validate_parameters,
            "log_prints": self.log_prints,
            "on_completion": self.on_completion_hooks,
            "on_failure": self.on_failure_hooks,
            "on_crashed": self.on_crashed_hooks,
            "on_cancellation": self.on_cancellation_hooks,
            "on_running": self.on_running_hooks,
        }
        unknown = set(options) - set(current)
        if unknown:
            raise InvalidInputError(f"unknown flow option(s): {', '.join(sorted(unknown))}")
        return Flow(self.fn, **{**current, **options})


@overload
def flow(fn: Callable[P, R], /) -> Flow[P, R]: ...


@overload
def flow(
    *,
    name: str | None = None,
    version: str | None = None,
    retries: int | None = None,
    retry_delay_seconds: float | None = None,
    timeout_seconds: float | None = None,
    flow_run_name: str | Callable[[], str] | None = None,
    validate_parameters: bool = True,
    log_prints: bool = False,
    on_completion: Iterable[Hook] | None = None,
    on_failure: Iterable[Hook] | None = None,
    on_crashed: Iterable[Hook] | None = None,
    on_cancellation: Iterable[Hook] | None = None,
    on_running: Iterable[Hook] | None = None,
) -> Callable[[Callable[P, R]], Flow[P, R]]: ...


def flow(
    fn: Callable[P, R] | None = None, /, **options: Any
) -> Flow[P, R] | Callable[[Callable[P, R]], Flow[P, R]]:
    """Make a function a flow: ``@flow`` or ``@flow(retries=2, timeout_seconds=60, ...)``.

    Options, as in Prefect: ``name``, ``version``, ``retries``, ``retry_delay_seconds``,
    ``timeout_seconds``, ``flow_run_name`` (a template over the parameters, or a
    callable), ``validate_parameters``, ``log_prints``, and hooks ``on_completion``,
    ``on_failure``, ``on_crashed``, ``on_cancellation``, ``on_running``.
    """
    if fn is not None:
        return Flow(fn, **options)

    def decorate(function: Callable[P, R]) -> Flow[P, R]:
        return Flow(function, **options)

    return decorate
