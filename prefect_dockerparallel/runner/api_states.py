"""Final states the driver decides are written to the Prefect API, so the UI agrees with the future.

Why: a worker's task engine reports its task run's states itself (as events). When the driver, not
the engine, decides how a task ended (its worker was lost until attempts ran out, its result could
not be pickled or decoded, it could not be submitted, the cluster stopped first), no engine reports
it: the API would show the run Running forever, COMPLETED where the future is Failed, or no run at
all (404). The reporter forces the decided state onto the task run, creating the run when the API
never heard of it. Calls run on one background thread (never the result listener's) inside the
context captured when the first task was submitted (the same API URL and key as the flow run).
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
import uuid
from typing import Any

log = logging.getLogger("prefect_dockerparallel.api_states")

_STOP = object()


class ApiStateReporter:
    """One background thread that forces driver-decided final states onto task runs."""

    def __init__(self) -> None:
        self._context = contextvars.copy_context()
        self._queue: queue.Queue[Any] = queue.Queue()
        self._pending = 0
        self._idle = threading.Condition()
        self._client: Any = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def report(self, task: Any, task_run_id: uuid.UUID, flow_run_id: uuid.UUID | None, state: Any) -> None:
        """Queue `state` (a final Prefect State) for the task run; returns at once."""
        with self._idle:
            self._pending += 1
        self._queue.put((task, task_run_id, flow_run_id, api_copy(state)))
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._context.run, args=(self._loop,),
                                                name="dp-api-states", daemon=True)
                self._thread.start()

    def flush(self, timeout: float = 20.0) -> bool:
        """Wait until every queued state reached the API (or failed to); False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float = 20.0) -> None:
        self.flush(timeout)
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout=5)

    def _loop(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                try:
                    self._write(*item)
                except Exception as exc:  # noqa: BLE001 - the future already has the state
                    log.warning("could not record the final state of task run %s in the Prefect API: %s", item[1], exc)
                finally:
                    with self._idle:
                        self._pending -= 1
                        self._idle.notify_all()
        finally:
            if self._client is not None:
                try:
                    self._client.__exit__(None, None, None)
                except Exception:  # noqa: BLE001
                    pass

    def _api(self) -> Any:
        if self._client is None:
            from prefect.client.orchestration import get_client

            client = get_client(sync_client=True)
            client.__enter__()
            self._client = client
        return self._client

    def _write(self, task: Any, task_run_id: uuid.UUID, flow_run_id: uuid.UUID | None, state: Any) -> None:
        client = self._api()
        for _ in range(3):
            if _status_of(lambda: client.set_task_run_state(task_run_id, state, force=True)) != 404:
                return
            # No engine event reached the API yet (lost before the first flush, or still queued):
            # create the run. 409: the worker's events created it meanwhile, so set it again.
            dynamic_key = uuid.uuid4().hex
            created = _status_of(lambda: client.create_task_run(
                task=task, flow_run_id=flow_run_id, dynamic_key=dynamic_key, id=task_run_id,
                name=f"{task.name}-{dynamic_key[:3]}", state=state,
            ))
            if created != 409:
                # The API orchestrates a new run's first state: force the final one on top.
                client.set_task_run_state(task_run_id, api_copy(state), force=True)
                return
        raise RuntimeError("the task run kept appearing and disappearing")


def _status_of(call: Any) -> int:
    """200 when `call` succeeded, the HTTP status for 404 / 409, anything else raises."""
    import httpx
    from prefect.exceptions import ObjectNotFound

    try:
        call()
        return 200
    except ObjectNotFound:
        return 404
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code in (404, 409):
            return exc.response.status_code
        raise


def api_copy(state: Any) -> Any:
    """A fresh State of the same type, name and message, timestamped now and without data: newer
    than anything the worker's engine reported (the API keeps the newest), and nothing to persist."""
    from prefect.client.schemas.objects import State

    return State(type=state.type, name=state.name, message=state.message)


def current_flow_run_id() -> uuid.UUID | None:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    flow_run = getattr(ctx, "flow_run", None) if ctx else None
    return getattr(flow_run, "id", None)
