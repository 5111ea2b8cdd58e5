"""Signed envelopes: cloudpickle bodies authenticated with HMAC-SHA256.

Layout: MAGIC(4) | kind(1) | id_len(1) | id | expires(8) | mac(32) | body. The MAC covers the
cluster name (not sent: both ends know it), kind, id, the expiry (Unix milliseconds) and body,
and it is checked with `hmac.compare_digest` before a single byte of the body is unpickled, so a
client that knows the Redis password but not the cluster's signing key cannot run code on a worker,
cannot move an envelope to another cluster, and cannot extend its life. The id keeps its offset
(byte 6), so the requeue Lua and `peek_ident` read it without knowing the rest.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
import time
from dataclasses import dataclass
from typing import Mapping

import cloudpickle

from .keys import ENV_CLUSTER, ENV_SIGNING_KEY

MAGIC = b"DPE2"
MAC_SIZE = 32
EXPIRES_SIZE = 8
# How long an envelope stays valid: as long as the payload parts it refers to (BLOB_TTL), so an
# envelope that could still run is never refused, and the acked-id set needs to live no longer.
ENVELOPE_TTL = 24 * 3600
KIND_TASK = b"T"
KIND_RESULT = b"R"
KIND_BLOB = b"B"


class EnvelopeError(Exception):
    """Raised for malformed or unauthenticated envelopes; never carries the payload."""


class EnvelopeExpired(EnvelopeError):
    """An authentic envelope past the expiry it was signed with."""

    def __init__(self, message: str, ident: str):
        super().__init__(message)
        self.ident = ident


class PayloadTooLarge(ValueError):
    """A serialized payload exceeds the cluster's configured limit."""


@dataclass(frozen=True)
class Envelope:
    kind: bytes
    ident: str
    body: bytes
    expires_ms: int = 0


class Signer:
    """Seals and opens envelopes with one cluster's signing key."""

    def __init__(
        self, key: bytes, max_payload_bytes: int | None = None, cluster: str = "", ttl: float = ENVELOPE_TTL
    ):
        if len(key) < 16:
            raise ValueError("signing key must be at least 16 bytes")
        self._key = key
        self.max_payload_bytes = max_payload_bytes
        self.cluster = cluster
        self.ttl_ms = int(ttl * 1000)
        # The cluster binding is the MAC's first input: one keyed state, copied per envelope.
        self._base = hmac.new(key, b"dp-cluster:" + cluster.encode() + b"\0", hashlib.sha256)

    def __repr__(self) -> str:
        return f"Signer(key=***, cluster={self.cluster!r})"

    @classmethod
    def from_env(cls, env: Mapping[str, str], max_payload_bytes: int | None = None) -> "Signer":
        """A container's signer: its cluster's key, bound to its cluster's name."""
        return cls(bytes.fromhex(env[ENV_SIGNING_KEY]), max_payload_bytes, cluster=env[ENV_CLUSTER])

    def _mac(self, header: bytes, body: bytes) -> bytes:
        """MAC over the cluster, then kind | id_len | id | expires (the header), then the body."""
        mac = self._base.copy()
        mac.update(header)
        mac.update(body)
        return mac.digest()

    def seal(self, kind: bytes, ident: str, body: bytes) -> bytes:
        if self.max_payload_bytes is not None and len(body) > self.max_payload_bytes:
            raise PayloadTooLarge(
                f"payload of {len(body)} bytes exceeds max_payload_bytes={self.max_payload_bytes}; "
                "pass large data by reference (a file in object storage) or raise max_payload_bytes"
            )
        raw_id = ident.encode()
        if len(raw_id) > 255:
            raise ValueError("envelope id longer than 255 bytes")
        expires = (int(time.time() * 1000) + self.ttl_ms).to_bytes(EXPIRES_SIZE, "big")
        header = b"".join((kind, len(raw_id).to_bytes(1, "big"), raw_id, expires))
        return b"".join((MAGIC, header, self._mac(header, body), body))

    def open(self, data: bytes, check_expiry: bool = True) -> Envelope:
        """Verify and split an envelope. Raises EnvelopeError (expired: EnvelopeExpired); never
        unpickles. A wrong cluster shows as a wrong signature: the cluster is part of the MAC."""
        if not isinstance(data, (bytes, bytearray)) or len(data) < 6 + EXPIRES_SIZE + MAC_SIZE:
            raise EnvelopeError("envelope too short")
        if data[:4] != MAGIC:
            raise EnvelopeError("envelope has a wrong magic number")
        id_end = 6 + data[5]
        mac_start = id_end + EXPIRES_SIZE
        if len(data) < mac_start + MAC_SIZE:
            raise EnvelopeError("envelope truncated")
        view = memoryview(data)
        header = view[4:mac_start]
        body = bytes(view[mac_start + MAC_SIZE :])
        if not hmac.compare_digest(view[mac_start : mac_start + MAC_SIZE], self._mac(header, body)):
            raise EnvelopeError("envelope signature does not match the cluster secret (or another cluster's)")
        try:
            ident = bytes(view[6:id_end]).decode()
        except UnicodeDecodeError as exc:
            raise EnvelopeError("envelope id is not UTF-8") from exc
        expires_ms = int.from_bytes(view[id_end:mac_start], "big")
        if check_expiry and expires_ms < time.time() * 1000:
            raise EnvelopeExpired(f"envelope {ident!r} expired (signed validity is {self.ttl_ms // 1000} s)", ident)
        return Envelope(kind=bytes(view[4:5]), ident=ident, body=body, expires_ms=expires_ms)

    def dumps(self, kind: bytes, ident: str, obj: object) -> bytes:
        return self.seal(kind, ident, cloudpickle.dumps(obj))

    def dumps_result(self, ident: str, obj: object) -> bytes:
        """A worker's result: plain pickle when it can, cloudpickle when it must.

        Why: a task's State pickles about 4x faster with the C pickler (27 us against 109 us)
        and the bytes are the same. Plain pickle refers to functions and classes by module and
        name and checks that the name leads back to the same object; anything that fails that
        check here (a class that reached the worker by value, a lambda) raises, and cloudpickle
        then pickles it by value as before. Not used driver -> worker: there the driver's
        `__main__` would pass the check and then not exist on the worker.
        """
        try:
            body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # noqa: BLE001 - PicklingError, TypeError, AttributeError...
            body = cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        return self.seal(KIND_RESULT, ident, body)

    def loads(self, data: bytes, expect_kind: bytes | None = None) -> tuple[str, object]:
        """Verify, then unpickle. The only place protocol data is unpickled."""
        env = self.open(data)
        if expect_kind is not None and env.kind != expect_kind:
            raise EnvelopeError(f"expected envelope kind {expect_kind!r}, got {env.kind!r}")
        return env.ident, cloudpickle.loads(env.body)


def peek_ident(data: bytes) -> str | None:
    """Read an envelope's id without verifying it (for bookkeeping only, never for trust)."""
    try:
        if data[:4] != MAGIC:
            return None
        return bytes(data[6 : 6 + data[5]]).decode()
    except (IndexError, UnicodeDecodeError):
        return None


def digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()
