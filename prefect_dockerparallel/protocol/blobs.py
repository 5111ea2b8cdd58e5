"""Content-addressed payload parts, referenced from envelopes by persistent id.

A task object, a flow-run context or a 50 MB `unmapped` argument is pickled once, stored under
its SHA-256 (signed like any envelope) and referenced by digest from every task that uses it, so a
map over 200 elements uploads it once. Workers keep recently used parts unpickled in memory.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from typing import Any, Callable

import cloudpickle

from .envelope import KIND_BLOB, EnvelopeError, Signer, digest
from .queue import TaskQueue


class _RefPickler(cloudpickle.Pickler):
    """cloudpickle, except that objects listed in `refs` (by id) become persistent ids."""

    def __init__(self, file: io.BytesIO, refs: dict[int, str]):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._refs = refs

    def persistent_id(self, obj: Any) -> str | None:  # noqa: D102 - pickle hook
        return self._refs.get(id(obj))


def dumps_with_refs(obj: Any, refs: dict[int, str]) -> bytes:
    if not refs:
        return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    buf = io.BytesIO()
    _RefPickler(buf, refs).dump(obj)
    return buf.getvalue()


class BlobStore:
    """Driver side: upload each distinct part once per cluster."""

    def __init__(self, queue: TaskQueue, signer: Signer):
        self._queue = queue
        self._signer = signer
        self._uploaded: set[str] = set()

    def put_bytes(self, body: bytes) -> str:
        key = digest(body)
        if key not in self._uploaded:
            self._queue.put_blob(key, self._signer.seal(KIND_BLOB, key, body))
            self._uploaded.add(key)
        return key

    def put(self, obj: Any) -> tuple[str, int]:
        """Pickle and upload `obj`; returns (digest, size in bytes)."""
        body = cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        return self.put_bytes(body), len(body)


class BlobResolver:
    """Worker side: fetch, verify and unpickle parts, with a small LRU of live objects."""

    def __init__(self, fetch: Callable[[str], bytes | None], signer: Signer, capacity: int = 64):
        self._fetch = fetch
        self._signer = signer
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._capacity = capacity

    def get(self, key: str) -> Any:
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        raw = self._fetch(key)
        if raw is None:
            raise EnvelopeError(f"payload part {key[:12]} is missing from Redis (expired or purged)")
        env = self._signer.open(raw)
        if env.kind != KIND_BLOB or env.ident != key or digest(env.body) != key:
            raise EnvelopeError(f"payload part {key[:12]} does not match its digest")
        obj = self.loads(env.body)
        self._cache[key] = obj
        if len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        return obj

    def loads(self, body: bytes) -> Any:
        """Unpickle a verified body, resolving persistent ids through this resolver."""
        unpickler = pickle.Unpickler(io.BytesIO(body))
        unpickler.persistent_load = self.get  # type: ignore[method-assign]
        return unpickler.load()
