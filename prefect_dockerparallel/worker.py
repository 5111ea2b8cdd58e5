"""Worker container entrypoint: claim signed envelopes from Redis and run them.

`python -m prefect_dockerparallel.worker` reads its connection and secrets from the environment
(`providers.base.worker_env`). With DOCKERPARALLEL_SLOTS=n>1 it supervises n slot processes (one
task each at a time, like the seed's R workers); each slot checks versions against the driver's
record, keeps its lease alive from a heartbeat thread, runs Prefect tasks through the task engine
with one long-lived settings context and API client, and exits by itself when the driver's
heartbeat has been gone for `idle_timeout` (dead-man's switch) or the cluster is stopping.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import cloudpickle

from . import runtime
from .protocol import KIND_RESULT, KIND_TASK, EnvelopeError, Signer, TaskQueue, connect_from_env
from .protocol import keys as K
from .protocol.blobs import BlobResolver
from .protocol.queue import versions

log = logging.getLogger("prefect_dockerparallel.worker")

EXIT_VERSION_MISMATCH = 3


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
    return "; ".join(problems) or None


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


def portable_exception(exc: BaseException) -> BaseException:
    """The exception itself if it survives a pickle round trip, else a RuntimeError with its text.

    Some exceptions (pydantic's, for one) pickle but cannot be unpickled; the driver must still
    learn what happened.
    """
    try:
        cloudpickle.loads(cloudpickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001
        import traceback

        text = "".join(traceback.format_exception(exc))
        return RuntimeError(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}\n{text}")


def failed_state_for(exc: BaseException, what: str) -> Any:
    from prefect.states import Failed

    err = ResultNotSerializable(f"the task's {what} could not be serialized on the worker: {exc!r}")
    return Failed(message=str(err), data=err)


class WorkerSlot:
    """One task slot: a claim/run/ack loop plus a heartbeat thread."""

    def __init__(self, queue: TaskQueue, signer: Signer, worker_id: str, idle_timeout: float):
        self.queue = queue
        self.signer = signer
        self.worker_id = worker_id
        self.idle_timeout = idle_timeout
        self.blobs = BlobResolver(queue.get_blob, signer)
        self.prefect = PrefectRuntime()
        self.stop_reason: str | None = None
        self._stop = threading.Event()
        self._exited = threading.Event()

    # -- liveness --------------------------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        while not self._stop.is_set():
            try:
                alive, stopping = self.queue.heartbeat(self.worker_id)
            except Exception as exc:  # noqa: BLE001 - Redis gone: the server stopped
                alive, stopping = False, False
                log.warning("heartbeat failed: %s", exc)
            if stopping:
                self._request_stop("cluster stopping")
            elif not alive:
                self._request_stop("driver heartbeat gone (dead-man's switch)")
            if self._stop.wait(K.HEARTBEAT_INTERVAL):
                # teardown: time to finish the claim and flush events; driver gone: leave soon
                self._hard_exit_if_stuck(3.0 if stopping else 1.0)
                return

    def _request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stop.set()

    def _hard_exit_if_stuck(self, grace: float) -> None:
        """A task still running when the driver is gone would keep a container billed: leave."""
        if self._exited.wait(grace):
            return
        log.warning("worker %s abandoning its running task: %s", self.worker_id, self.stop_reason)
        self._release_then_exit(0)

    def _release_then_exit(self, code: int) -> None:
        """Give claimed tasks back if Redis still answers within 2 s, then leave regardless."""

        def release() -> None:
            try:
                self.queue.release(self.worker_id)
                self.queue.leave(self.worker_id)
            except Exception:  # noqa: BLE001 - the server is gone too
                pass

        helper = threading.Thread(target=release, daemon=True)
        helper.start()
        helper.join(timeout=2)
        os._exit(code)

    def on_sigterm(self, *_: Any) -> None:
        """Fargate Spot reclaim / scale-in: give claimed tasks back, then leave at once."""
        log.warning("worker %s got SIGTERM: releasing its claimed tasks", self.worker_id)
        self._release_then_exit(143)

    # -- main loop -------------------------------------------------------------------------
    def wait_for_driver_meta(self) -> dict[str, str]:
        deadline = time.monotonic() + self.idle_timeout
        while time.monotonic() < deadline:
            meta = self.queue.read_meta()
            if meta:
                return meta
            time.sleep(0.2)
        raise TimeoutError("the driver never published its versions; is this the right cluster?")

    def run(self) -> int:
        mismatch = check_versions(self.wait_for_driver_meta())
        if mismatch:
            msg = f"worker {self.worker_id} refused to join: version mismatch ({mismatch})"
            self.queue.report_error(msg)
            log.error(msg)
            return EXIT_VERSION_MISMATCH
        self.prefect.warm_up()
        # Prefect's modules and models (~150,000 objects) live as long as the process: keep them
        # out of the collector's scans. GC time per 500 no-op tasks: 0.09-0.12 s -> 0.02 s.
        gc.freeze()
        self.queue.join(self.worker_id)
        runtime.set_worker_link(runtime.WorkerLink(self.queue, self.signer, self.worker_id))
        beat = threading.Thread(target=self._heartbeat_loop, name="dp-heartbeat", daemon=True)
        beat.start()
        log.info("worker %s joined cluster %s", self.worker_id, self.queue.keys.cluster)
        try:
            envelope: bytes | None = None
            while not self._stop.is_set():
                if envelope is None:
                    envelope = self.queue.claim(self.worker_id, K.BLOCKING_POP_TIMEOUT)
                if envelope is None:
                    if self.queue.take_retirement():
                        self._request_stop("scaled down")
                    continue
                if envelope == K.STOP_SENTINEL:
                    self._request_stop("cluster stopping")
                    break
                envelope = self.handle(envelope)
        finally:
            self._stop.set()
            self._exited.set()
            self.prefect.flush()
            self.prefect.close()
            try:
                self.queue.release(self.worker_id)
                self.queue.leave(self.worker_id)
            except Exception:  # noqa: BLE001 - server already gone
                pass
        log.info("worker %s exiting: %s", self.worker_id, self.stop_reason)
        return 0

    def handle(self, envelope: bytes) -> bytes | None:
        """Run one envelope; returns the next one when the ack could claim it in passing."""
        try:
            env = self.signer.open(envelope)
            if env.kind != KIND_TASK:
                raise EnvelopeError(f"unexpected envelope kind {env.kind!r}")
        except EnvelopeError as exc:  # unauthenticated: drop it unread, tell the driver
            msg = f"worker {self.worker_id} rejected an envelope: {exc}"
            log.error(msg)
            self.queue.report_error(msg)
            self.queue.ack(self.worker_id, envelope, "", None)
            return None
        _, _, listener = K.split_ident(env.ident)
        try:
            call = self.blobs.loads(env.body)
        except Exception as exc:  # noqa: BLE001 - authentic but not loadable here: fail loudly
            hint = isinstance(exc, ModuleNotFoundError)
            err = RuntimeError(
                f"worker {self.worker_id} could not load the task: {exc!r}"
                + ("; install the module in the worker image or add it to pip_packages" if hint else "")
            )
            self.queue.ack(self.worker_id, envelope, listener, self.signer.dumps(KIND_RESULT, env.ident, ("err", err)))
            return None
        outcome = self.execute(call)
        result = self.seal_result(env.ident, outcome, call)
        return self.queue.ack(self.worker_id, envelope, listener, result, claim_next=not self._stop.is_set())

    def execute(self, call: dict[str, Any]) -> tuple[str, Any]:
        try:
            if call["kind"] == "prefect":
                return ("ok", self.prefect.run_task(call))
            return ("ok", call["fn"](*call["args"], **call["kwargs"]))
        except BaseException as exc:  # noqa: BLE001 - every outcome goes back to the driver
            if isinstance(exc, (KeyboardInterrupt, SystemExit)) and self._stop.is_set():
                raise
            return ("err", portable_exception(exc))

    def seal_result(self, ident: str, outcome: tuple[str, Any], call: dict[str, Any]) -> bytes:
        try:
            return self.signer.dumps_result(ident, outcome)
        except Exception as exc:  # noqa: BLE001 - unpicklable result or exception
            what = "exception" if outcome[0] == "err" else "result"
            if call.get("kind") == "prefect":
                fallback: tuple[str, Any] = ("ok", failed_state_for(exc, what))
            else:
                fallback = ("err", ResultNotSerializable(f"the {what} could not be serialized: {exc!r}"))
            return self.signer.dumps(KIND_RESULT, ident, fallback)


def new_worker_id() -> str:
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def run_slot() -> int:
    env = os.environ
    signer = Signer(bytes.fromhex(env[K.ENV_SIGNING_KEY]))
    queue = TaskQueue(connect_from_env(env), env[K.ENV_CLUSTER])
    worker_id = env.get(K.ENV_WORKER_ID) or new_worker_id()
    slot = WorkerSlot(queue, signer, worker_id, float(env.get(K.ENV_IDLE_TIMEOUT, "60")))
    signal.signal(signal.SIGTERM, slot.on_sigterm)
    return slot.run()


def driver_alive(queue: TaskQueue) -> bool:
    try:
        return bool(queue.redis.exists(queue.keys.driver))
    except Exception:  # noqa: BLE001 - Redis gone means the cluster is gone
        return False


def supervise(slots: int) -> int:
    """Run `slots` slot processes; replace one that crashed while the cluster is alive."""
    child_env = {**os.environ, K.ENV_SLOTS: "1"}
    child_env.pop(K.ENV_WORKER_ID, None)
    cmd = [sys.executable, "-m", "prefect_dockerparallel.worker"]
    children = [subprocess.Popen(cmd, env=child_env) for _ in range(slots)]

    def forward(signum: int, _: Any) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    queue = TaskQueue(connect_from_env(child_env), child_env[K.ENV_CLUSTER])
    while True:
        for i, child in enumerate(children):
            code = child.poll()
            if code is None or code == 0:
                continue
            if code == EXIT_VERSION_MISMATCH or not driver_alive(queue):
                forward(signal.SIGTERM, None)
                return code
            log.warning("slot process exited with %s; starting a replacement", code)
            children[i] = subprocess.Popen(cmd, env=child_env)
        if all(c.poll() == 0 for c in children):
            return 0
        time.sleep(0.5)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(message)s")
    slots = int(os.environ.get(K.ENV_SLOTS, "1"))
    if slots > 1:
        return supervise(slots)
    return run_slot()


if __name__ == "__main__":
    sys.exit(main())
