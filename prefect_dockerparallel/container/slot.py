"""One worker slot: a claim / run / ack loop with a heartbeat thread (the lease and the
dead-man's switch), SIGTERM release, and nested submission through the process-wide link."""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import threading
import time
import uuid
from typing import Any, Callable, TypeVar

import redis

from . import link as runtime
from .lending import Lender
from ..protocol import KIND_RESULT, KIND_TASK, EnvelopeError, EnvelopeExpired, Signer, TaskQueue, connect_from_env
from ..protocol import keys as K
from ..protocol.blobs import BlobResolver
from ..protocol.limits import ENVELOPE_OVERHEAD, ReplyTooLarge
from .engine import (
    PrefectRuntime,
    ResultNotSerializable,
    check_versions,
    failed_state_for,
    portable_exception,
    with_portable_exception,
)

log = logging.getLogger("prefect_dockerparallel.worker")

EXIT_VERSION_MISMATCH = 3
REDIS_RETRY_INTERVAL = 1.0  # while Redis is unreachable (a network partition), try again this often
ACK_ATTEMPTS = 3  # an ack Redis refuses (not a network error) this often: the element is put aside
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)
T = TypeVar("T")


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
        unreachable_since: float | None = None
        while not self._stop.is_set():
            try:
                alive, stopping = self.queue.heartbeat(self.worker_id)
                unreachable_since = None
            except Exception as exc:  # noqa: BLE001 - a network partition, or the server stopped
                # Keep the running task for up to idle_timeout (the driver's own patience): if the
                # link comes back, its result is still delivered (a re-run's duplicate is dropped).
                now = time.monotonic()
                if unreachable_since is None:
                    unreachable_since = now
                    log.warning("heartbeat failed: %s; retrying for up to %.0f s", exc, self.idle_timeout)
                alive, stopping = now - unreachable_since < self.idle_timeout, False
            if stopping:
                self._request_stop("cluster stopping")
            elif not alive and unreachable_since is not None:
                self._request_stop(f"Redis unreachable for {self.idle_timeout:.0f} s")
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
        meta = self.wait_for_driver_meta()
        if int(meta.get("max_payload_bytes") or 0) > 0:  # never read (or write) more than that
            self.queue.limit_reads(int(meta["max_payload_bytes"]) + ENVELOPE_OVERHEAD)
            self.signer.max_payload_bytes = int(meta["max_payload_bytes"])  # a result no one could read
        mismatch = check_versions(meta)
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
        runtime.set_worker_link(runtime.WorkerLink(self.queue, self.signer, self.worker_id, Lender(self)))
        beat = threading.Thread(target=self._heartbeat_loop, name="dp-heartbeat", daemon=True)
        beat.start()
        log.info("worker %s joined cluster %s", self.worker_id, self.queue.keys.cluster)
        try:
            envelope: bytes | None = None
            prechecked = False  # an envelope claimed by the ack script was checked against the acked set
            while not self._stop.is_set():
                if envelope is None:
                    envelope, prechecked = self._claim(), False
                if envelope is None:
                    if not self._stop.is_set() and self._patiently(self.queue.take_retirement):
                        self._request_stop("scaled down")
                    continue
                if envelope == K.STOP_SENTINEL:
                    self._request_stop("cluster stopping")
                    break
                envelope, prechecked = self.handle(envelope, prechecked), True
        finally:
            self._stop.set()
            self._exited.set()
            self.prefect.flush()
            self.prefect.close()
            self._leave_cluster()
        log.info("worker %s exiting: %s", self.worker_id, self.stop_reason)
        return 0

    def _leave_cluster(self) -> None:
        """Hand back what this slot still holds and leave the cluster's worker set."""
        try:
            self.queue.release(self.worker_id)
            self.queue.leave(self.worker_id)
        except Exception:  # noqa: BLE001 - server already gone
            pass

    def handle(self, envelope: bytes, prechecked: bool = False) -> bytes | None:
        """Run one envelope; returns the next one when the ack could claim it in passing.

        Refused unread: a wrong signature (forged, or another cluster's), an expired envelope
        (its future fails), an id already acked in this cluster (a replay: it ran already).
        """
        try:
            env = self.signer.open(envelope)
            if env.kind != KIND_TASK:
                raise EnvelopeError(f"unexpected envelope kind {env.kind!r}")
        except EnvelopeExpired as exc:  # authentic: tell its future why it will never run
            self._refuse(envelope, str(exc))
            listener = K.split_ident(exc.ident)[2]
            err = RuntimeError(f"the task was not run: {exc}")
            self._ack(envelope, listener, self.signer.dumps(KIND_RESULT, exc.ident, ("err", err)))
            return None
        except EnvelopeError as exc:  # unauthenticated: drop it unread, tell the driver
            self._refuse(envelope, str(exc))
            return None
        if not prechecked and self.queue.is_acked(env.ident):
            self._refuse(envelope, f"envelope {env.ident!r} was already acked in this cluster (a replay)")
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
            self._ack(envelope, listener, self.signer.dumps(KIND_RESULT, env.ident, ("err", err)), ident=env.ident)
            return None
        outcome = self.execute(call)
        result = self.seal_result(env.ident, outcome, call)
        try:
            return self._ack(envelope, listener, result, claim_next=self._may_claim_next(), ident=env.ident)
        except UNREACHABLE:
            # The ack is one atomic script: running it again at worst pushes a duplicate result,
            # which the listener drops. A next claim whose reply was lost is given back.
            self._patiently(lambda: self.queue.ack(self.worker_id, envelope, listener, result, ident=env.ident))
            self._patiently(lambda: self.queue.release(self.worker_id))
            return None

    def _refuse(self, envelope: bytes, why: str) -> None:
        """Put an envelope aside (dead-letter, counted) without running it, and tell the driver."""
        msg = f"worker {self.worker_id} rejected an envelope: {why}"
        log.error(msg)
        self.queue.report_error(msg)
        self.queue.put_aside(self.worker_id, envelope, why[:200])

    def _ack(self, envelope: bytes, listener: str, result: bytes | None, claim_next: bool = False,
             ident: str | None = None) -> bytes | None:
        """The ack, retried a bounded number of times when Redis refuses it (a results key of the
        wrong type, out of memory); then the element is put aside instead of going back to the
        queue, where it would be claimed, fail and come back forever. Network errors propagate."""
        for attempt in range(1, ACK_ATTEMPTS + 1):
            try:
                return self.queue.ack(self.worker_id, envelope, listener, result, claim_next=claim_next, ident=ident)
            except UNREACHABLE:
                raise
            except redis.RedisError as exc:
                error = exc
                time.sleep(0.1 * attempt)
        why = f"the ack failed {ACK_ATTEMPTS} times: {error}"
        msg = f"worker {self.worker_id} put an envelope aside: {why}"
        log.error(msg)
        self.queue.put_aside(self.worker_id, envelope, why[:200])
        self.queue.report_error(msg)
        return None

    def _may_claim_next(self) -> bool:
        return not self._stop.is_set()

    def _claim(self) -> bytes | None:
        try:
            return self.queue.claim(self.worker_id, K.BLOCKING_POP_TIMEOUT)
        except ReplyTooLarge as exc:  # refused unread: it sits in our processing list, put it aside
            msg = f"worker {self.worker_id} put an oversized element aside: {exc}"
            log.error(msg)
            self._patiently(lambda: self.queue.put_aside(self.worker_id, None, "oversized"))
            self._patiently(lambda: self.queue.report_error(msg))
            return None
        except UNREACHABLE:
            # A claim whose reply was lost may have moved an envelope into our processing list,
            # where our own lease would hide it from the reaper: give it back once Redis answers.
            self._patiently(lambda: self.queue.release(self.worker_id))
            return None

    def _patiently(self, op: Callable[[], T]) -> T | None:
        """Run a Redis call, riding out an unreachable server (a network partition) for up to
        idle_timeout; then stop the slot (None): the driver has re-queued its task by then."""
        since = time.monotonic()
        while True:
            try:
                return op()
            except UNREACHABLE as exc:
                if self._stop.is_set() or time.monotonic() - since >= self.idle_timeout:
                    self._request_stop(f"Redis unreachable: {exc}")
                    return None
                time.sleep(REDIS_RETRY_INTERVAL)

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
            if call.get("kind") == "prefect" and with_portable_exception(outcome[1]):
                try:  # the task raised an exception that carries an unpicklable attribute
                    return self.signer.dumps_result(ident, outcome)
                except Exception as again:  # noqa: BLE001
                    exc = again
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
    signer = Signer.from_env(env)
    queue = TaskQueue(connect_from_env(env), env[K.ENV_CLUSTER])
    worker_id = env.get(K.ENV_WORKER_ID) or new_worker_id()
    slot = WorkerSlot(queue, signer, worker_id, float(env.get(K.ENV_IDLE_TIMEOUT, "60")))
    signal.signal(signal.SIGTERM, slot.on_sigterm)
    return slot.run()
