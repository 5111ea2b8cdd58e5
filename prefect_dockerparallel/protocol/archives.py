"""Signed, content-addressed code archives and their manifest, as the driver writes them.

    dp:{cluster}:code:{sha256 of the zip}   DPA1 | HMAC-SHA256(key, DPA1 + zip) | zip
    dp:{cluster}:code-manifest              DPM1 | HMAC-SHA256(key, DPM1 + json) | json

The manifest names the package archive (with a digest of its sources, so an image that already
has the same sources skips the fetch), dependency archives (fetched only where the image lacks
the module) and the user's code archive. Workers read them with `container/bootstrap.py`, which
repeats this format with the standard library only (a test checks that both agree). An archive
already in Redis is not uploaded again.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from .keys import BLOB_TTL, Keys

MANIFEST_MAGIC = b"DPM1"
ARCHIVE_MAGIC = b"DPA1"


def seal(key: bytes, magic: bytes, payload: bytes) -> bytes:
    return magic + hmac.new(key, magic + payload, hashlib.sha256).digest() + payload


@dataclass(frozen=True)
class Archive:
    """One zip to ship: `name` for logs, `meta` goes into its manifest entry."""

    name: str
    data: bytes = field(repr=False)
    meta: tuple[tuple[str, Any], ...] = ()

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def entry(self) -> dict[str, Any]:
        return {"name": self.name, "digest": self.digest, "bytes": len(self.data), **dict(self.meta)}


@dataclass
class Shipment:
    """What one publish did: bytes sent to Redis, and which archives were already there."""

    uploaded: dict[str, int] = field(default_factory=dict)
    present: dict[str, int] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0  # wall time of the publish (round trips and upload)

    @property
    def bytes_uploaded(self) -> int:
        return sum(self.uploaded.values())

    def describe(self) -> str:
        sent = ", ".join(f"{n} {b / 1024:.0f} kB" for n, b in self.uploaded.items()) or "nothing"
        kept = ", ".join(self.present) or "none"
        return f"uploaded {sent} in {self.seconds:.2f} s; already in Redis: {kept}"


def publish(
    client: redis.Redis,
    cluster: str,
    key: bytes,
    package: Archive,
    deps: list[Archive],
    code: Archive | None,
) -> Shipment:
    """Store the archives (each once: SET NX after an EXISTS, so a present one costs no upload)
    and then the manifest that lists them (workers poll for the manifest)."""
    started = time.monotonic()
    keys = Keys(cluster)
    out = Shipment()
    for archive in [package, *deps, *([code] if code else [])]:
        name = keys.code(archive.digest)
        if client.exists(name):
            client.expire(name, BLOB_TTL)
            out.present[archive.name] = len(archive.data)
        else:
            client.set(name, seal(key, ARCHIVE_MAGIC, archive.data), nx=True, ex=BLOB_TTL)
            out.uploaded[archive.name] = len(archive.data)
    out.manifest = {
        "v": 1,
        "package": package.entry(),
        "deps": [d.entry() for d in deps],
        "code": code.entry() if code else None,
    }
    body = json.dumps(out.manifest, sort_keys=True).encode()
    client.set(keys.code_manifest, seal(key, MANIFEST_MAGIC, body), ex=BLOB_TTL)
    out.seconds = time.monotonic() - started
    return out
