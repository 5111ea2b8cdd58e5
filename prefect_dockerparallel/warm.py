"""Warm clusters: a flow run's end detaches instead of tearing down; the next run attaches.

A warm cluster is found by name, and its name is a hash of everything that shapes it (image,
packages, sizes, timeouts, tags, this package's and Prefect's versions): a changed configuration
gets a new cluster and never attaches to one built from the old. The lookup is the provider's
(`reconnect`: the local state file, the server container's secrets file, SSM, a Kubernetes
Secret), so equal specs on different engines, regions or clusters never meet.

The dead-man's switch becomes a lease: every attached run beats the driver key with a TTL of
`max(idle_timeout, keep_alive)`, and a run that detaches beats it once more with `keep_alive`. When
no run has beaten it for that long — all detached, or every driver SIGKILLed — the server and the
workers stop themselves, as they do for a cluster of one run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import TYPE_CHECKING, Any

from .specs import ClusterSpec

if TYPE_CHECKING:
    from .cluster import DockerCluster

WARM_PREFIX = "dpw"


def warm_cluster_name(spec: ClusterSpec, keep_alive: float, provider_kind: str, shipped: tuple[str, ...] = ()) -> str:
    """`dpw-<10 hex>` from the spec without its name and flow run (those differ per run), and
    the digests of the code archives its workers bootstrap with (`shipping`), if any."""
    from . import __version__
    from .protocol.queue import versions

    shape = dataclasses.asdict(dataclasses.replace(spec, name="x", flow_run_id=None))
    identity = {"spec": shape, "keep_alive": keep_alive, "provider": provider_kind,
                "package": __version__, "versions": versions()}
    if shipped:
        identity["shipped"] = list(shipped)
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
    return f"{WARM_PREFIX}-{digest[:10]}"


def attach_or_start(cluster: "DockerCluster") -> bool:
    """Attach to the running cluster of this name, else start it; True when it attached.

    Two runs that start at once both find nothing: the second one's start fails on the name the
    first one took (a Docker container name, an O_EXCL state file, ...) and it attaches instead."""
    if cluster.exists():
        try:
            cluster.reconnect()
            return True
        except RuntimeError:
            pass  # it stopped between the two looks: start a new one
    try:
        cluster.start()
        return False
    except Exception:
        if not cluster.exists():
            raise
        cluster.reconnect()
        return True


def describe(attached: bool, cluster: Any) -> str:
    numbers = cluster.worker_numbers()
    if attached:
        return (f"attached to warm cluster {cluster.name} ({numbers.running} workers running; it stays "
                f"up {cluster.keep_alive:g} s after the last run detaches)")
    return f"started warm cluster {cluster.name} (kept {cluster.keep_alive:g} s after the last run detaches)"


def detach(cluster: "DockerCluster", pending: tuple[str, str] | None = None) -> None:
    """Leave a warm cluster running for the next flow run: renew the lease with `keep_alive`
    and stop this object's threads; other runs' tasks are untouched. Futures still pending here
    end with `pending` (status, message)."""
    from .cluster import STOPPED, log

    with cluster._lock:
        listener, queue = cluster.listener, cluster.queue
        if queue is not None:
            try:
                queue.beat_driver(cluster.keep_alive or cluster.spec.idle_timeout)
                scaler = cluster.autoscaler
                if scaler is not None:  # no run drives the scaler while detached: idle at the minimum
                    joined, busy = queue.slot_usage()
                    surplus = joined - max(scaler.policy.min_workers, busy)
                    if surplus > 0 and queue.pending() == 0:
                        queue.cancel_retirement()
                        queue.retire(surplus)  # idle slots leave; another run's busy ones finish first
                        cluster.expected = joined - surplus
            except Exception as exc:  # noqa: BLE001 - server gone: nothing to keep alive
                log.debug("could not renew the lease of %s: %s", cluster.name, exc)
        cluster._stop_threads(fail_pending=False)
        try:
            cluster.driver.detached(cluster.spec)
        except Exception as exc:  # noqa: BLE001 - the lease still ends the cluster
            log.warning("could not hand the tidying of %s on: %s", cluster.name, exc)
        if listener is not None:
            status, message = pending or ("lost", STOPPED)
            listener.fail_all(message, status=status)
        if cluster.queue is not None:
            cluster.queue.redis.close()
            cluster.queue = None
        log.info("detached from warm cluster %s (stays up %g s unless another run attaches)",
                 cluster.name, cluster.keep_alive or cluster.spec.idle_timeout)
