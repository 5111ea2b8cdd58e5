"""Builds the payload of one Prefect task submission, uploading shared parts once.

Per-task cost on the driver is kept low by caching what does not change within a flow run: the
pickled Task, the serialized flow-run context and the serialized settings (with the driver's
effective API URL, so workers reach an ephemeral server too) are uploaded once as content-addressed
blobs and referenced by digest. Large parameter values that a `map` shares between its calls
(`unmapped`) are uploaded once per map.
"""

from __future__ import annotations

import threading
import uuid
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import cloudpickle
from prefect.utilities.annotations import BaseAnnotation

from ..protocol import KIND_TASK, PayloadTooLarge, Signer, TaskQueue
from ..protocol import keys as K
from ..protocol.blobs import BlobStore, dumps_with_refs
from ..container.engine import register_annotation_pickling

LARGE_VALUE_BYTES = 256 * 1024
MAP_BATCH = 64
_SMALL_SCALARS = (int, float, bool, type(None), uuid.UUID)


register_annotation_pickling()


class UnpicklableParameter(TypeError):
    """A task parameter cannot be serialized for the cluster."""


def effective_api_url() -> str | None:
    """The API URL this flow run really talks to (an ephemeral server's too)."""
    from prefect.context import FlowRunContext
    from prefect.settings import PREFECT_API_URL

    ctx = FlowRunContext.get()
    client = getattr(ctx, "client", None) if ctx else None
    url = getattr(client, "api_url", None)
    return str(url) if url else PREFECT_API_URL.value()


class PayloadBuilder:
    """Turns (task, parameters, ...) into signed envelopes for one runner."""

    def __init__(self, queue: TaskQueue, signer: Signer, blobs: BlobStore, listener_id: str):
        self.queue = queue
        self.signer = signer
        self.blobs = blobs
        self.listener_id = listener_id
        self._keep: dict[int, tuple[Any, str]] = {}  # id -> (object kept alive, digest)
        self._settings: tuple[int, dict[str, Any]] | None = None
        self._flow_ctx: tuple[int, dict[str, Any]] | None = None
        self._map_scope = threading.local()
        self._lock = threading.Lock()

    # -- cached parts ----------------------------------------------------------------------
    def _ref(self, obj: Any) -> str:
        """Digest of a long-lived object, uploading it the first time it is seen."""
        entry = self._keep.get(id(obj))
        if entry is not None and entry[0] is obj:
            return entry[1]
        digest, _ = self.blobs.put(obj)
        self._keep[id(obj)] = (obj, digest)
        return digest

    def _settings_part(self) -> tuple[dict[str, Any], str]:
        from prefect.context import SettingsContext

        current = SettingsContext.get()
        if self._settings is None or self._settings[0] != id(current):
            data = current.serialize() if current else {}
            url = effective_api_url()
            if url and data:
                data["settings"].setdefault("api", {})["url"] = url
            self._settings = (id(current), data)
        data = self._settings[1]
        return data, self._ref(data)

    def _flow_context_part(self) -> dict[str, Any]:
        """The serialized flow-run context, computed once per flow run (it is the same for all)."""
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
        if self._flow_ctx is None or self._flow_ctx[0] != id(ctx):
            data = ctx.serialize() if ctx else {}
            if data.get("flow") is not None:
                data["flow"] = _flow_for_payload(data["flow"])
            self._flow_ctx = (id(ctx), data)
        return self._flow_ctx[1]

    def per_task_context(self) -> dict[str, Any]:
        """The part of `serialize_context()` that may differ between tasks of one flow run."""
        from prefect.context import TagsContext, TaskRunContext

        task_ctx = TaskRunContext.get()
        tags_ctx = TagsContext.get()
        return {
            "task_run_context": task_ctx.serialize() if task_ctx else {},
            "tags_context": tags_ctx.serialize() if tags_ctx and tags_ctx.current_tags else {},
        }

    # -- map scope: share large unmapped values --------------------------------------------
    @contextmanager
    def map_scope(self, shared: Iterable[Any] = ()) -> Iterator[list[bytes]]:
        """Within a map, `shared` values (the `unmapped` ones) are uploaded once if large, and
        envelopes are batched into one LPUSH."""
        # bytes and str count too: a 50 MB `unmapped(b"...")` must not travel once per task
        self._map_scope.values = {id(v): None for v in shared if not isinstance(v, _SMALL_SCALARS)}
        self._map_scope.batch = []
        try:
            yield self._map_scope.batch
        finally:
            self._map_scope.values = None
            self._map_scope.batch = None

    def _large_value_refs(self, parameters: dict[str, Any], refs: dict[int, str]) -> None:
        shared = getattr(self._map_scope, "values", None)
        if shared is None:
            return
        for value in parameters.values():
            if isinstance(value, BaseAnnotation):  # allow_failure(unmapped(x)) arrives as allow_failure(x)
                value = value.unwrap()
            if id(value) not in shared:
                continue  # per-call values are pickled once, inline
            hit = shared[id(value)]
            if hit is None:
                body = cloudpickle.dumps(value)
                digest = self.blobs.put_bytes(body) if len(body) >= LARGE_VALUE_BYTES else ""
                shared[id(value)] = hit = (value, digest)
            if hit[1]:
                refs[id(value)] = hit[1]

    # -- envelopes -------------------------------------------------------------------------
    def ident(self, task_run_id: uuid.UUID) -> str:
        return K.make_ident("P", task_run_id.hex, self.listener_id)

    def build(
        self,
        ident: str,
        task: Any,
        task_run_id: uuid.UUID,
        parameters: dict[str, Any],
        wait_for: Any,
        dependencies: Any,
    ) -> bytes:
        from prefect.context import _deployment_id, _deployment_parameters

        with self._lock:
            settings, settings_id = self._settings_part()
            flow_context = self._flow_context_part()
            flow_context_id = self._ref(flow_context)
            refs = {id(task): self._ref(task), id(settings): settings_id, id(flow_context): flow_context_id}
        self._large_value_refs(parameters, refs)
        deployment_id = _deployment_id.get()
        call = {
            "kind": "prefect",
            "task": task,
            "task_run_id": task_run_id,
            "parameters": parameters,
            "wait_for": wait_for,
            "dependencies": dependencies,
            "context": self.per_task_context(),
            "settings": settings,
            "settings_id": settings_id,
            "flow_context": flow_context,
            "flow_context_id": flow_context_id,
            "deployment_id": str(deployment_id) if deployment_id else None,
            "deployment_parameters": _deployment_parameters.get(),
        }
        try:
            body = dumps_with_refs(call, refs)
        except Exception as exc:  # noqa: BLE001 - find the culprit for a useful message
            raise unpicklable_error(task, parameters, exc) from exc
        try:
            return self.signer.seal(KIND_TASK, ident, body)
        except PayloadTooLarge as exc:
            raise PayloadTooLarge(f"task {task.name!r}: {exc}") from None

    def send(self, envelope: bytes) -> None:
        batch = getattr(self._map_scope, "batch", None)
        if batch is None:
            self.queue.enqueue([envelope])
            return
        batch.append(envelope)
        if len(batch) >= MAP_BATCH:  # workers start on the first envelopes of a long map
            self.queue.enqueue(batch)
            batch.clear()


def _flow_not_on_workers(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("the flow's function does not travel to the workers; only its tasks run there")


def _flow_for_payload(flow: Any) -> Any:
    """A shallow copy of the flow for the workers: a task runner with no provider or credential,
    and no function. Workers need the flow's identity and settings (name, result storage, its
    runner for nested submits), never its body; pickled by value (a flow in `__main__`), the body
    would drag every global it uses along, and one unpicklable global (a module-level
    `threading.Lock`) would stop every submit."""
    import copy

    shipped = copy.copy(flow)
    runner = getattr(flow, "task_runner", None)
    if hasattr(runner, "payload_copy"):
        shipped.task_runner = runner.payload_copy()
    stub = _stub_like(getattr(flow, "fn", None))
    if stub is not None:
        shipped.fn = stub
        if "__wrapped__" in vars(shipped):
            shipped.__wrapped__ = stub
    return shipped


def _stub_like(fn: Any) -> Any:
    """A function that refuses to run, under the flow function's names (reprs stay the same)."""
    if fn is None or not callable(fn):
        return None

    def flow_function_not_shipped(*args: Any, **kwargs: Any) -> Any:
        return _flow_not_on_workers(*args, **kwargs)

    for name in ("__name__", "__qualname__", "__doc__"):  # not update_wrapper: no __wrapped__
        try:
            setattr(flow_function_not_shipped, name, getattr(fn, name))
        except (AttributeError, TypeError):
            pass
    return flow_function_not_shipped


def unpicklable_error(task: Any, parameters: dict[str, Any], exc: Exception) -> Exception:
    for name, value in parameters.items():
        try:
            cloudpickle.dumps(value)
        except Exception as inner:  # noqa: BLE001
            return UnpicklableParameter(
                f"parameter {name!r} of task {getattr(task, 'name', task)!r} cannot be sent to the "
                f"cluster because it cannot be pickled ({inner!r}); pass data the worker can rebuild "
                "(a path, a URL, plain values) or create the object inside the task"
            )
    fn = getattr(task, "fn", None)
    code, module_globals = getattr(fn, "__code__", None), getattr(fn, "__globals__", None) or {}
    for name in getattr(code, "co_names", ()):
        if name not in module_globals:
            continue
        try:
            cloudpickle.dumps(module_globals[name])
        except Exception as inner:  # noqa: BLE001
            return UnpicklableParameter(
                f"task {getattr(task, 'name', task)!r} cannot be sent to the cluster: it uses the global "
                f"{name!r} of module {getattr(fn, '__module__', '?')!r} ({type(module_globals[name]).__name__}), "
                f"which cannot be pickled ({inner!r}); create it inside the task, or move the task into "
                "a module of its own that the workers import"
            )
    return UnpicklableParameter(
        f"task {getattr(task, 'name', task)!r} cannot be pickled for the cluster: {exc!r}"
    )
