"""`cluster.executor()`: the cluster as a plain `concurrent.futures.Executor` (no Prefect needed)."""

from __future__ import annotations

import concurrent.futures
import uuid
from typing import Any, Callable

from .runner.futures import plain_converter
from .protocol import KIND_TASK
from .protocol import keys as K
from .protocol.blobs import dumps_with_refs


class ClusterExecutor(concurrent.futures.Executor):
    """Runs `fn(*args, **kwargs)` on the cluster's workers; results and exceptions come back as is."""

    def __init__(self, cluster: Any):
        self._cluster = cluster
        self._futures: set[concurrent.futures.Future[Any]] = set()
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        if self._shutdown:
            raise RuntimeError("cannot submit after shutdown")
        cluster = self._cluster
        if cluster.listener is None:
            raise RuntimeError(f"cluster {cluster.name!r} is not running")
        ident = K.make_ident("C", uuid.uuid4().hex, cluster.listener.listener_id)
        future = cluster.listener.register(ident, plain_converter)
        call = {"kind": "call", "fn": fn, "args": args, "kwargs": kwargs}
        try:
            cluster.queue.enqueue([cluster.signer.seal(KIND_TASK, ident, dumps_with_refs(call, {}))])
        except Exception as exc:
            cluster.listener.resolve(ident, "rejected", exc)
            raise
        self._futures.add(future)
        future.add_done_callback(self._futures.discard)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._shutdown = True
        if wait:
            concurrent.futures.wait(list(self._futures))
