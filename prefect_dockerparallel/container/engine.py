"""Prefect's side of a worker slot: version check, long-lived run contexts, portable outcomes.

Kept apart from the slot loop so that what a slot does with Redis reads without Prefect, and what
it does with Prefect's engine reads without Redis.
"""

from __future__ import annotations

import copyreg
import logging
from typing import Any

import cloudpickle

from ..protocol.queue import versions
from ..specs import official_prefect_image

log = logging.getLogger("prefect_dockerparallel.worker")


class ResultNotSerializable(RuntimeError):
    """A task's return value or exception could not be pickled on the worker."""


def prefect_version() -> str:
    import prefect

    return prefect.__version__


def check_versions(driver_meta: dict[str, str]) -> str | None:
    """Return a mismatch description, or None when this worker may unpickle the driver's data."""
    mine = {**versions(), "prefect": prefect_version()}
    problems = [
        f"{name}: driver {driver_meta[name]}, worker {mine[name]}"
        for name in ("python", "cloudpickle", "prefect")
        if name in driver_meta and driver_meta[name] != mine[name]
    ]
    if not problems:
        return None
    if "prefect" in driver_meta and "python" in driver_meta:
        image = official_prefect_image(driver_meta["prefect"], driver_meta["python"])
        problems.append(f"use the image {image} (the default), or one with the driver's versions")
    return "; ".join(problems)


def _reduce_annotation(annotation: Any) -> tuple[Any, tuple[Any]]:
    return type(annotation), (annotation[0],)


def register_annotation_pickling() -> None:
    """Make Prefect's annotations (`allow_failure`, `quote`, `unmapped`, ...) survive pickle.

    Why: they are tuple subclasses whose `__new__` takes the value, while pickle rebuilds a tuple
    subclass from its items, so `allow_failure(x)` came back as `allow_failure((x,))` and the task
    received `(x,)`. A copyreg reducer per class (pickle and cloudpickle both honour copyreg) makes
    them travel as `cls(value)`, nested annotations and persistent ids inside included. Called by
    the driver (parameters) and by every worker (results, nested submits).
    """
    from prefect.utilities.annotations import BaseAnnotation

    pending = [BaseAnnotation]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls is not BaseAnnotation and cls not in copyreg.dispatch_table:
            copyreg.pickle(cls, _reduce_annotation)


class PrefectRuntime:
    """Keeps the flow run's hydrated settings, API client and flow-run context alive across tasks.

    Prefect's `hydrated_context` validates Settings and the FlowRunContext model on every call
    (about 10 ms per task); both are identical for every task of a flow run, so they are entered
    once per (settings, flow-run context) pair and only per-task context goes to the engine.
    """

    def __init__(self) -> None:
        self._key: tuple[str, str] | None = None
        self._stack: Any = None

    def enter(self, call: dict[str, Any]) -> None:
        key = (call["settings_id"], call["flow_context_id"])
        if key == self._key:
            return
        from contextlib import ExitStack
        from uuid import UUID

        from prefect.context import (
            FlowRunContext,
            SettingsContext,
            SyncClientContext,
            _deployment_id,
            _deployment_parameters,
        )

        from prefect.logging.configuration import ensure_logging_setup

        # The context models were rebuilt once, in `warm_up`, which runs before any claim.
        self.close()
        stack = ExitStack()
        if call["settings"]:
            stack.enter_context(SettingsContext(**call["settings"]))
        # As Prefect's hydrated_context does for remote tasks: without this the worker never
        # attaches the API log handler, and task logs and prints would not reach the UI.
        ensure_logging_setup()
        client = stack.enter_context(SyncClientContext.get_or_create()).client
        flow_ctx = call["flow_context"]
        if flow_ctx:
            runner = stack.enter_context(flow_ctx["flow"].task_runner.duplicate())
            stack.enter_context(FlowRunContext(**flow_ctx, client=client, task_runner=runner, detached=True))
        if call["deployment_id"]:
            stack.callback(_deployment_id.reset, _deployment_id.set(UUID(call["deployment_id"])))
        if call["deployment_parameters"]:
            stack.callback(_deployment_parameters.reset, _deployment_parameters.set(call["deployment_parameters"]))
        self._stack, self._key = stack, key

    def close(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack, self._key = None, None

    @staticmethod
    def warm_up() -> None:
        """Pay Prefect's one-time costs (imports, collection loading, model rebuilds) before the
        first task is claimed, while the driver is still starting the rest of the cluster."""
        from prefect.context import hydrated_context
        from prefect.plugins import load_prefect_collections
        from prefect.task_engine import run_task_sync  # noqa: F401

        load_prefect_collections()
        register_annotation_pickling()
        with hydrated_context(None):
            pass  # rebuilds the context models (Flow/Task forward references), as Prefect does

    @staticmethod
    def flush() -> None:
        """Send buffered events and logs to the API before the process exits."""
        try:
            from prefect.events.worker import EventsWorker
            from prefect.logging.handlers import APILogWorker

            EventsWorker.drain_all(timeout=10)
            APILogWorker.drain_all(timeout=10)
        except Exception:  # noqa: BLE001 - best effort at exit
            log.debug("flush failed", exc_info=True)

    def run_task(self, call: dict[str, Any]) -> Any:
        """Run one Prefect task through the engine; returns its final State."""
        import asyncio

        from prefect.task_engine import run_task_async, run_task_sync

        self.enter(call)
        per_task = call["context"]  # tags, parent task run: small, and different per task
        kwargs = dict(
            task=call["task"],
            task_run_id=call["task_run_id"],
            parameters=call["parameters"],
            wait_for=call["wait_for"],
            return_type="state",
            dependencies=call["dependencies"],
            context=per_task if any(per_task.values()) else None,
        )
        if call["task"].isasync:
            return asyncio.run(run_task_async(**kwargs))
        return run_task_sync(**kwargs)


class RemoteTaskError(RuntimeError):
    """Stands in for a task's exception that cannot travel even without its attributes: it keeps
    the original type's name, the message and the worker's traceback text."""

    def __init__(self, type_name: str, message: str, traceback_text: str):
        super().__init__(f"{type_name}: {message}", type_name, message, traceback_text)
        self.type_name, self.message, self.traceback_text = type_name, message, traceback_text

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}\n{self.traceback_text}"

    def __reduce__(self) -> Any:
        return type(self), (self.type_name, self.message, self.traceback_text)


def _round_trips(obj: Any) -> bool:
    try:
        cloudpickle.loads(cloudpickle.dumps(obj))
        return True
    except Exception:  # noqa: BLE001 - unpicklable, or pickles but cannot be rebuilt
        return False


def _traceback_text(exc: BaseException) -> str:
    import traceback

    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _without_unpicklable_attributes(exc: BaseException) -> BaseException | None:
    """The same exception type, args and message, minus the attributes that cannot be pickled
    (a lock, a client), with the worker's traceback text as a note (shown when it is raised)."""
    cls = type(exc)
    try:
        copy = cls.__new__(cls, *exc.args)
        copy.args = exc.args
    except Exception:  # noqa: BLE001 - an exotic constructor: the RemoteTaskError stands in
        return None
    dropped = []
    for name, value in vars(exc).items():
        if name == "__notes__" or _round_trips(value):
            copy.__dict__[name] = value
        else:
            dropped.append(name)
    note = "the worker's traceback (the exception crossed a process boundary"
    note += f"; attribute(s) {', '.join(dropped)} could not be pickled and were left out):\n" if dropped else "):\n"
    copy.__dict__["__notes__"] = [*getattr(exc, "__notes__", []), note + _traceback_text(exc)]
    return copy


def portable_exception(exc: BaseException) -> BaseException:
    """The exception itself if it survives a pickle round trip; else the same type without the
    attributes that cannot be pickled; else a RemoteTaskError with its type name, message and
    traceback text. Some exceptions (pydantic's, for one) pickle but cannot be unpickled; the
    driver must still learn what happened, in the same words as with a local runner.
    """
    if _round_trips(exc):
        return exc
    copy = _without_unpicklable_attributes(exc)
    if copy is not None and _round_trips(copy):
        return copy
    return RemoteTaskError(f"{type(exc).__module__}.{type(exc).__qualname__}", str(exc), _traceback_text(exc))


def with_portable_exception(state: Any) -> bool:
    """Make the exception a failed Prefect State carries portable, in place; True if one was
    replaced (the caller pickles the state again)."""
    from prefect.results import ResultRecord

    holder, exc = None, getattr(state, "data", None)
    if isinstance(exc, ResultRecord):
        holder, exc = exc, exc.result
    if not isinstance(exc, BaseException):
        return False
    portable = portable_exception(exc)
    if portable is exc:
        return False
    if holder is not None:
        holder.result = portable
    else:
        state.data = portable
    return True


def failed_state_for(exc: BaseException, what: str) -> Any:
    from prefect.states import Failed

    err = ResultNotSerializable(f"the task's {what} could not be serialized on the worker: {exc!r}")
    return Failed(message=str(err), data=err)
