"""DockerParallelTaskRunner: Prefect's TaskRunner contract over a per-flow-run cluster.

`__enter__` is cheap and provisions nothing: Prefect enters `duplicate()` of the flow's runner in
every remote task's hydrated context. The cluster starts on the first `submit`; inside a worker
the runner attaches to the worker's own queue instead (nested submission). The runner pickles as
its configuration only (block names, no secrets, no provider objects).
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any, Iterable

from prefect.futures import PrefectFuture, PrefectFutureList
from prefect.task_runners import TaskRunner
from prefect.utilities.annotations import allow_failure, quote, unmapped
from prefect.utilities.collections import visit_collection

from .container import link as runtime
from .runner.api_states import ApiStateReporter, current_flow_run_id
from .runner.futures import Converter, DockerParallelFuture, ResultListener, state_converter
from .protocol import Signer, TaskQueue
from .protocol.blobs import BlobStore
from .runner.submission import PayloadBuilder
from .adaptive import AdaptivePolicy

_CONFIG_FIELDS = (
    "provider",
    "container",
    "workers",
    "worker_cpu",
    "worker_memory",
    "server_cpu",
    "server_memory",
    "idle_timeout",
    "max_attempts",
    "max_payload_bytes",
    "tags",
    "min_workers",
    "max_workers",
    "scale_down_after",
    "keep_alive",
)
PROVIDER_KINDS = ("local", "docker", "ecs", "aks")
log = logging.getLogger("prefect_dockerparallel.task_runner")


class DockerParallelTaskRunner(TaskRunner[DockerParallelFuture]):
    """Runs each submitted or mapped task on the flow run's own cluster of worker containers.

    Args:
        cluster: name of a saved `ClusterConfig` block (loaded at first submit, so edits apply to
            the next run), a `ClusterConfig`, or None (the `PREFECT_INTEGRATIONS_DOCKERPARALLEL_CLUSTER`
            setting if set, else a local cluster).
        provider, container, workers, ...: override fields of the cluster configuration.
    """

    def __init__(self, cluster: Any = None, **overrides: Any):
        super().__init__()
        unknown = set(overrides) - set(_CONFIG_FIELDS)
        if unknown:
            raise TypeError(
                f"DockerParallelTaskRunner got unknown argument(s) {sorted(unknown)}; "
                f"valid ones are cluster, {', '.join(_CONFIG_FIELDS)}"
            )
        validate_overrides(overrides)
        self.cluster = cluster
        self.overrides = overrides
        self._shipped = False  # True for copies unpickled from a task payload
        self._session: _Session | None = None
        self._session_lock = threading.Lock()

    # -- identity, pickling ------------------------------------------------------------------
    def duplicate(self) -> "DockerParallelTaskRunner":
        dup = type(self)(self.cluster, **self.overrides)
        dup._shipped = self._shipped
        return dup

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, DockerParallelTaskRunner)
            and self.cluster == other.cluster
            and self.overrides == other.overrides
        )

    def __getstate__(self) -> dict[str, Any]:
        """The configuration (for `flow.serve` subprocesses and the like), never live state.

        Task payloads do not carry this: `payload_copy()` replaces the runner there."""
        return {"cluster": self.cluster, "overrides": self.overrides, "shipped": self._shipped}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["cluster"], **state["overrides"])  # type: ignore[misc]
        self._shipped = state["shipped"]

    def payload_copy(self) -> "DockerParallelTaskRunner":
        """The runner as it travels inside task payloads: a block name at most, no provider and
        no credential. On a worker it only ever attaches to the worker's own queue."""
        copy = type(self)(self.cluster if isinstance(self.cluster, str) else None)
        copy._shipped = True
        return copy

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> "DockerParallelTaskRunner":
        super().__enter__()
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        session, self._session = self._session, None
        try:
            if session is not None:
                session.close(graceful=exc_type is None)
        finally:
            super().__exit__(exc_type, exc_value, traceback)

    @property
    def docker_cluster(self) -> Any:
        """The running DockerCluster (None before the first submit and on workers)."""
        return self._session.cluster if self._session else None

    def _ensure_session(self) -> "_Session":
        if self._session is not None:
            return self._session
        with self._session_lock:
            if self._session is None:
                link = runtime.worker_link()
                if link is not None:
                    self._session = _Session.on_worker(link)
                elif self._shipped:
                    raise RuntimeError(
                        "this DockerParallelTaskRunner was shipped inside a task payload and runs "
                        "outside a worker; it has no cluster configuration to provision with"
                    )
                else:
                    from .runner.config import build_cluster

                    self._session = _Session.on_driver(build_cluster(self.cluster, self.overrides))
        return self._session

    # -- submission --------------------------------------------------------------------------
    def submit(
        self,
        task: Any,
        parameters: dict[str, Any],
        wait_for: Iterable[PrefectFuture[Any]] | None = None,
        dependencies: dict[str, set[Any]] | None = None,
    ) -> DockerParallelFuture:
        if not self._started:
            raise RuntimeError("The task runner must be started before submitting work.")
        session = self._ensure_session()
        task_run_id = uuid.uuid4()
        ident = session.builder.ident(task_run_id)
        wrapped = session.listener.register(ident, session.converter(task, task_run_id))
        future = DockerParallelFuture(task_run_id=task_run_id, wrapped_future=wrapped)
        upstream = _upstream_futures(parameters, wait_for)
        dispatch = _Dispatch(session, ident, task, task_run_id, parameters, wait_for, dependencies)
        if not upstream:
            dispatch.run(raise_errors=True)
        else:
            dispatch.after(upstream)
        return future

    def map(
        self,
        task: Any,
        parameters: dict[str, Any],
        wait_for: Iterable[PrefectFuture[Any]] | None = None,
    ) -> PrefectFutureList[DockerParallelFuture]:
        if not self._started:
            raise RuntimeError("The task runner must be started before submitting work.")
        session = self._ensure_session()
        shared = [v.value for v in map(_unwrap, parameters.values()) if isinstance(v, unmapped)]
        with session.builder.map_scope(shared) as batch:
            try:
                return super().map(task, parameters, wait_for)
            finally:
                session.queue.enqueue(batch)


def _unwrap(value: Any) -> Any:
    """`allow_failure(unmapped(x))` and friends: look through the outer annotation."""
    return value.unwrap() if isinstance(value, (allow_failure, quote)) else value


def validate_overrides(overrides: dict[str, Any]) -> None:
    """Reject bad input before anything is provisioned, naming the field and the fix."""
    workers = overrides.get("workers")
    if workers is not None and (not isinstance(workers, int) or workers < 0):
        raise ValueError(f"workers={workers!r} is invalid: give the number of worker slots, an integer >= 0")
    AdaptivePolicy.from_fields(overrides.get("min_workers"), overrides.get("max_workers"),
                               overrides.get("scale_down_after"))
    keep_alive = overrides.get("keep_alive")
    if keep_alive is not None and (isinstance(keep_alive, bool) or not isinstance(keep_alive, (int, float))
                                   or keep_alive <= 0):
        raise ValueError(f"keep_alive={keep_alive!r} is invalid: give the seconds a warm cluster stays up after "
                         "its last flow run, a number > 0 (or None to tear down at once)")
    provider = overrides.get("provider")
    if provider is None:
        return
    if isinstance(provider, str):
        raise ValueError(
            f"provider={provider!r} is not a provider object: use LocalProvider(), DockerProvider(...), "
            "ECSFargateProvider(...) or AKSProvider(...)"
        )
    kind = getattr(provider, "kind", None)
    if kind not in PROVIDER_KINDS:
        raise ValueError(f"provider kind {kind!r} is unknown: valid kinds are {', '.join(PROVIDER_KINDS)}")


def _upstream_futures(parameters: dict[str, Any], wait_for: Any) -> list[PrefectFuture[Any]]:
    found: list[PrefectFuture[Any]] = []

    def collect(expr: Any) -> Any:
        if isinstance(expr, PrefectFuture):
            found.append(expr)
        return expr

    visit_collection(parameters, visit_fn=collect, return_data=False)
    visit_collection(list(wait_for or []), visit_fn=collect, return_data=False)
    return found


def _futures_to_states(expr: Any) -> Any:
    """Replace finished futures by their final States (picklable; the engine resolves them)."""

    def visit(value: Any) -> Any:
        if isinstance(value, PrefectFuture):
            value.wait()  # already finished: records the final state instead of asking the API
            return value.state
        return value

    return visit_collection(expr, visit_fn=visit, return_data=True)


class _Dispatch:
    """One submission, sent now or once its upstream futures have finished."""

    def __init__(self, session: "_Session", ident: str, task: Any, task_run_id: uuid.UUID,
                 parameters: dict[str, Any], wait_for: Any, dependencies: Any):
        self.session, self.ident, self.task, self.task_run_id = session, ident, task, task_run_id
        self.parameters, self.wait_for, self.dependencies = parameters, wait_for, dependencies

    def after(self, upstream: list[PrefectFuture[Any]]) -> None:
        remaining = {"n": len(upstream)}
        lock = threading.Lock()

        def on_done(_: Any) -> None:
            with lock:
                remaining["n"] -= 1
                ready = remaining["n"] == 0
            if ready:
                self.run(raise_errors=False, deferred=True)

        for future in upstream:
            future.add_done_callback(on_done)

    def run(self, raise_errors: bool, deferred: bool = False) -> None:
        if self.session.closing:  # the flow run returned before this task could start
            self.session.listener.resolve(self.ident, "cancelled", NOT_STARTED)
            return
        try:
            parameters = _futures_to_states(self.parameters) if deferred else self.parameters
            wait_for = _futures_to_states(list(self.wait_for)) if self.wait_for else None
            envelope = self.session.builder.build(
                self.ident, self.task, self.task_run_id, parameters, wait_for, self.dependencies
            )
            self.session.builder.send(envelope)
        except Exception as exc:  # noqa: BLE001
            self.session.listener.resolve(self.ident, "rejected", exc)
            if raise_errors:
                raise


class _Session:
    """The connection a runner uses: its cluster (driver) or its worker's queue (nested)."""

    def __init__(self, queue: TaskQueue, signer: Signer, cluster: Any = None):
        self.cluster = cluster
        self.queue = queue
        self.listener: ResultListener = cluster.listener if cluster else ResultListener(queue, signer)
        blobs = cluster.blobs if cluster else BlobStore(queue, signer)
        self.builder = PayloadBuilder(queue, signer, blobs, self.listener.listener_id)
        self.reporter = ApiStateReporter()
        self.progress: Any = None
        self.closing = False
        self.flow_run = _current_flow_run()  # its state tells a normal return from a failure

    def converter(self, task: Any, task_run_id: uuid.UUID) -> Converter:
        """The outcome-to-State converter of one task run; a state decided here rather than by the
        worker's engine (lost, undecodable, not submitted, unpicklable result) goes to the API too."""
        reporter, flow_run_id = self.reporter, current_flow_run_id()

        def convert(status: str, value: Any) -> tuple[bool, Any]:
            ok, state = state_converter(status, value)
            if status != "ok" or decided_off_engine(state):
                reporter.report(task, task_run_id, flow_run_id, state)
            return ok, state

        return convert

    @classmethod
    def on_worker(cls, link: runtime.WorkerLink) -> "_Session":
        return cls(link.queue, link.signer)

    @classmethod
    def on_driver(cls, cluster: Any) -> "_Session":
        import prefect

        from .runner.progress import ProvisioningProgress, run_logger_or_default

        cluster.extra_meta["prefect"] = prefect.__version__
        logger = run_logger_or_default()
        cluster.decision_log = logger
        if cluster.keep_alive:
            from .warm import attach_or_start, describe

            logger.info(describe(attach_or_start(cluster), cluster))
        else:
            logger.info("starting cluster %s on %s with %d workers", cluster.name, cluster.driver.kind, cluster.expected)
            cluster.start()
        session = cls(cluster.queue, cluster.signer, cluster=cluster)
        session.progress = ProvisioningProgress(cluster.name, cluster.worker_numbers, logger=logger).start()
        return session

    def close(self, graceful: bool = True) -> None:
        """On a normal return, as ThreadPoolTaskRunner's `shutdown(cancel_futures=True)`: tasks not
        started yet end Cancelled, running ones finish. After a timeout, an exception or a
        cancellation of the flow run: stop at once, pending tasks end Cancelled."""
        if self.progress is not None:
            self.progress.stop()
        try:
            if self.cluster is None:  # nested runner on a worker: its own listener, the worker's queue
                self.listener.close()
                return
            from .runner.config import finish_cluster

            ended = flow_run_ending(self.flow_run) if graceful else "interrupted"
            if ended is None:
                if self.drain():
                    finish_cluster(self.cluster)
                    return
                ended = "its Redis server did not answer"
            finish_cluster(self.cluster, pending=("cancelled", f"{STOPPED_EARLY} ({ended})"))
        finally:
            self.reporter.close()  # the states of tasks the stop decided reach the API too

    def drain(self) -> bool:
        """Cancel what no worker has claimed, then wait for what is running (nested children of
        running tasks still run: their parents wait for them). False if Redis does not answer."""
        self.closing = True
        from .protocol.envelope import peek_ident

        try:
            withdrawn = self.queue.withdraw(self.listener.listener_id)
        except Exception as exc:  # noqa: BLE001 - the server is gone: the listener fails the rest
            log.warning("could not take back the tasks that had not started: %s", exc)
            return False
        for raw in withdrawn:
            ident = peek_ident(raw)
            if ident:
                self.listener.resolve(ident, "cancelled", NOT_STARTED)
        self.listener.wait_idle()
        return True


NOT_STARTED = "the flow run returned before this task started (as ThreadPoolTaskRunner, it was cancelled)"
STOPPED_EARLY = "the flow run ended before this task finished and its cluster was stopped"


def _current_flow_run() -> Any:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return getattr(ctx, "flow_run", None) if ctx else None


def flow_run_ending(flow_run: Any) -> str | None:
    """None when the flow function returned normally (its run is Completed, or Failed by what it
    returned); else how it ended: the state name of a timeout, crash, cancellation, an exception."""
    state = getattr(flow_run, "state", None)
    if state is None or state.is_completed():
        return None
    if state.is_failed() and state.name == "Failed" and not (state.message or "").startswith(
        "Flow run encountered an exception"
    ):
        return None  # it returned failed futures or states: a normal return
    return state.name or str(state.type)


def decided_off_engine(state: Any) -> bool:
    """A Failed state the worker made after its engine had reported the run (the result could not
    be pickled): the API still shows what the engine reported."""
    from .container.engine import ResultNotSerializable

    return isinstance(getattr(state, "data", None), ResultNotSerializable)
