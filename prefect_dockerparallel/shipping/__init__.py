"""Driver side of zero-build workers: what ships to a cluster's Redis for the workers' bootstrap.

`prepare(container)` builds the archives before anything is provisioned (so a too-large project
fails first); `publish` stores them and the signed manifest once the server answers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis

from ..protocol.archives import Archive, Shipment, publish
from ..specs import ContainerSpec
from .package import dependency_archives, package_archive
from .usercode import CodeTooLarge, code_archive, detect, explicit

log = logging.getLogger("prefect_dockerparallel.shipping")

__all__ = ["CodeTooLarge", "Prepared", "prepare", "ship"]


@dataclass(frozen=True)
class Prepared:
    package: Archive
    deps: tuple[Archive, ...]
    code: Archive | None

    def digests(self) -> tuple[str, ...]:
        """What the workers will run: equal digests, equal code (a warm cluster's identity)."""
        return tuple(a.digest for a in (self.package, *self.deps, *([self.code] if self.code else [])))


def prepare(container: ContainerSpec) -> Prepared | None:
    """The archives this container's bootstrap needs; None when it does not use the bootstrap."""
    if not container.ship_package:
        return None
    units = [*(detect() if container.ship_code else []), *explicit(container.code_paths)]
    code = code_archive(units, int(container.max_code_mb * 2**20)) if units else None
    return Prepared(package_archive(), dependency_archives(), code)


def ship(client: redis.Redis, cluster: str, key: bytes, prepared: Prepared) -> Shipment:
    shipment = publish(client, cluster, key, prepared.package, list(prepared.deps), prepared.code)
    roots = ", ".join(prepared.code.entry().get("roots", [])) if prepared.code else "none"
    log.info("cluster %s: worker code in Redis (user modules: %s): %s", cluster, roots, shipment.describe())
    return shipment
