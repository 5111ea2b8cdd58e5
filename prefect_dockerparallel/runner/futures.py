"""Futures resolved by one result-listener thread per runner.

Each submission registers a `concurrent.futures.Future` and a converter under its envelope id;
the listener pops signed results from the runner's own Redis list and resolves them. Prefect
futures wrap those with `PrefectConcurrentFuture`, so `wait`, `as_completed`, `.result(timeout=)`
and `PrefectFutureList` behave exactly as with Prefect's own runners.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
import time
import uuid
from typing import Any, Callable

from prefect._flow_run_suspension import raise_if_flow_run_suspension_requested
from prefect.client.schemas.objects import State
from prefect.futures import PrefectConcurrentFuture
from prefect.results import ResultRecord

from ..container.link import worker_link
from ..protocol import KIND_RESULT, EnvelopeError, Signer, TaskQueue

log = logging.getLogger("prefect_dockerparallel.futures")

# A converter turns an outcome tuple ("ok"|"err"|"lost"|"undecodable"|"rejected"|"cancelled", value) into
# (succeeded, value-or-exception) for the concurrent future.
WAKE_UP = b"wake-up"
REDIS_DOWN_FAIL_AFTER = 15.0  # seconds without Redis before pending futures fail (never hang)
Converter = Callable[[str, Any], tuple[bool, Any]]
_NO_LENDING = contextlib.nullcontext()


class WorkerLost(RuntimeError):
    """A task's worker died and the task ran out of attempts."""


class ClusterStopped(RuntimeError):
    """The cluster stopped (or lost its Redis data) before the task finished."""


def plain_converter(status: str, value: Any) -> tuple[bool, Any]:
    """For `cluster.executor()`: exceptions re-raise as themselves."""
    if status == "ok":
        return True, value
    if status == "lost":
        return False, WorkerLost(value)
    if status == "undecodable":
        return False, RuntimeError(f"the result could not be decoded on the driver: {value}")
    if status == "cancelled":
        return False, concurrent.futures.CancelledError(value)
    return False, value  # "err" (raised by the function) or "rejected" (bad input)


def state_converter(status: str, value: Any) -> tuple[bool, Any]:
    """For Prefect tasks: every outcome becomes a terminal State, never an exception."""
    from prefect.states import Crashed, Failed

    if status == "ok":
        return True, value
    if status == "lost":
        return True, Crashed(message=str(value), data=WorkerLost(value))
    if status == "undecodable":
        err = RuntimeError(f"the task's result could not be decoded on the driver: {value}")
        return True, Failed(message=str(err), data=err)
    if status == "rejected":
        return True, Failed(message=f"the task could not be submitted: {value}", data=value)
    if status == "cancelled":
        from prefect.states import Cancelled

        return True, Cancelled(message=str(value))
    return True, Crashed(message=f"the worker could not run the task: {value!r}", data=value)


class ResultListener:
    """Owns one results list in Redis and the futures waiting on it."""

    def __init__(self, queue: TaskQueue, signer: Signer, listener_id: str | None = None):
        self.queue = queue
        self.signer = signer
        self.listener_id = listener_id or uuid.uuid4().hex[:12]
        self._pending: dict[str, tuple[concurrent.futures.Future[Any], Converter]] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._resolving = 0  # popped from _pending, future not set yet
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dp-results", daemon=True)
        self._thread.start()

    def register(self, ident: str, converter: Converter) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        future.set_running_or_notify_cancel()
        with self._lock:
            self._pending[ident] = (future, converter)
        return future

    def resolve(self, ident: str, status: str, value: Any) -> None:
        with self._lock:
            entry = self._pending.pop(ident, None)
            if entry is None:
                return  # a duplicate from an at-least-once re-run: the first result won
            self._resolving += 1
        try:
            future, converter = entry
            ok, payload = converter(status, value)
            if ok:
                future.set_result(payload)
            else:
                future.set_exception(payload)
        finally:
            with self._lock:
                self._resolving -= 1
                if not self._pending and not self._resolving:
                    self._idle.notify_all()

    def fail_all(self, message: str, status: str = "lost") -> None:
        with self._lock:
            idents = list(self._pending)
        for ident in idents:
            self.resolve(ident, status, message)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no future is pending (each resolved by its result, a loss, or a failure)."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._pending and not self._resolving, timeout)

    def _loop(self) -> None:
        down_since: float | None = None
        while not self._stop.is_set():
            try:
                batch = self.queue.pop_results(self.listener_id, timeout=1)
                down_since = None
            except Exception as exc:  # noqa: BLE001 - Redis restarting or gone
                now = time.monotonic()
                if down_since is None:
                    down_since = now
                    log.warning("result listener lost Redis: %s", exc)
                elif now - down_since > REDIS_DOWN_FAIL_AFTER:
                    self.fail_all(
                        f"lost the connection to the cluster's Redis server for over "
                        f"{REDIS_DOWN_FAIL_AFTER:.0f} s: {exc}"
                    )
                self._stop.wait(0.5)
                continue
            for raw in batch:
                if raw != WAKE_UP:
                    self._deliver(raw)

    def _deliver(self, raw: bytes) -> None:
        try:
            env = self.signer.open(raw)
            if env.kind != KIND_RESULT:  # a task envelope pushed here must not resolve its future
                raise EnvelopeError(f"expected a result envelope, got kind {env.kind!r}")
        except EnvelopeError as exc:
            log.error("dropped a result envelope: %s", exc)
            return
        try:
            import cloudpickle

            status, value = cloudpickle.loads(env.body)
        except Exception as exc:  # noqa: BLE001 - class missing on the driver, etc.
            status, value = "undecodable", repr(exc)
        self.resolve(env.ident, status, value)

    def close(self, reason: str | None = "the cluster stopped before the task finished") -> None:
        """Stop the thread; pending futures fail with `reason` (None: the caller resolves them)."""
        self._stop.set()
        try:
            self.queue.push_result(self.listener_id, WAKE_UP)  # end the blocking pop now
        except Exception:  # noqa: BLE001 - Redis already gone: the pop times out by itself
            pass
        self._thread.join(timeout=5)
        if reason is not None:
            self.fail_all(reason)


class DockerParallelFuture(PrefectConcurrentFuture[Any]):
    """A Prefect future whose wrapped future is resolved with the task's final State.

    Waited on inside a worker (a parent task waiting on its child), the waiting slot is lent to
    a temporary slot for the wait (container/lending.py): nested submits never deadlock."""

    def _lending(self) -> Any:
        link = worker_link()
        if link is None or link.lender is None or self._wrapped_future.done():
            return _NO_LENDING
        return link.lender.lend()

    def wait(self, timeout: float | None = None) -> None:
        with self._lending():
            super().wait(timeout)

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> Any:
        """As Prefect's, with a fast path for a Completed state that carries its value in memory:
        `State.result()` would hop to Prefect's event-loop thread for every one of 1000 results."""
        if self._final_state is None:
            try:
                with self._lending():
                    value = self._wrapped_future.result(timeout=timeout)
            except concurrent.futures.TimeoutError as exc:
                raise TimeoutError(
                    f"Task run {self.task_run_id} did not complete within {timeout} seconds"
                ) from exc
            if isinstance(value, State):
                self._final_state = value
        state = self._final_state
        if state is not None and state.is_completed() and isinstance(state.data, ResultRecord):
            raise_if_flow_run_suspension_requested()
            return state.data.result
        return super().result(timeout=timeout, raise_on_failure=raise_on_failure)
