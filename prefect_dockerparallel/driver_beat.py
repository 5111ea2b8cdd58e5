"""The driver's heartbeat: what DockerCluster's heartbeat thread does once per beat.

It renews the lease the server and workers watch (the dead-man's switch), notices a Redis that
lost its data, re-queues the tasks of workers whose lease expired and fails those out of attempts
(only for signed task envelopes: a forged element names no task), relays worker errors and
dead-lettered elements to the log, takes one adaptive-scaling step, heals lost containers every
10 s, and asks the provider whether a silent server is gone for good.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from .protocol import KIND_RESULT, KIND_TASK, EnvelopeError
from .protocol import keys as K
from .protocol.limits import ENVELOPE_OVERHEAD

if TYPE_CHECKING:
    from .cluster import DockerCluster

log = logging.getLogger("prefect_dockerparallel.cluster")  # the cluster's log, as before the split


def heartbeat_loop(cluster: "DockerCluster") -> None:
    """The driver heartbeat thread's loop: beat, adapt, heal every 10 s."""
    interval = min(cluster.spec.idle_timeout / 4, 2.0)
    last_heal = time.monotonic()
    while not cluster._beat_stop.wait(interval):
        try:
            beat_once(cluster)
            cluster._adapt()
            if cluster.heal and time.monotonic() - last_heal > 10:
                last_heal = time.monotonic()
                cluster.update()
        except Exception as exc:  # noqa: BLE001 - keep beating through transient errors
            log.warning("driver heartbeat of %s failed: %s", cluster.name, exc)
            fail_if_server_gone(cluster)


def beat_once(cluster: "DockerCluster") -> None:
    """Renew the lease, notice lost Redis data, reap lost workers' tasks, relay errors."""
    queue, signer, listener = cluster.queue, cluster.signer, cluster.listener
    if queue is None or signer is None or listener is None:
        return
    queue.beat_driver(cluster.lease_ttl)
    if not queue.read_meta():
        listener.fail_all("the cluster's Redis server lost its data (it restarted); the task did not finish")
        queue.publish_meta(cluster._meta())
    for r in queue.requeue_expired(cluster.spec.max_attempts, cluster.spec.max_payload_bytes + ENVELOPE_OVERHEAD):
        _, task_id, reply_to = K.split_ident(r.ident)
        why = why_lost(cluster, r.worker_id)
        if not r.exhausted:
            log.warning("worker %s was lost%s; task %s re-queued", r.worker_id, why, task_id)
            continue
        try:  # act only on signed data: an element forged with the password names no task
            env = signer.open(r.envelope or b"", check_expiry=False)
            if env.kind != KIND_TASK:
                raise EnvelopeError(f"unexpected envelope kind {env.kind!r}")
        except EnvelopeError as exc:
            log.error("dropped an element claimed by lost worker %s: %s", r.worker_id, exc)
            continue
        _, task_id, reply_to = K.split_ident(env.ident)
        attempts = cluster.spec.max_attempts
        msg = f"task {task_id} was lost with worker {r.worker_id} after {attempts} attempt{'s' * (attempts != 1)}{why}"
        log.error(msg)
        queue.push_result(reply_to, signer.dumps(KIND_RESULT, env.ident, ("lost", msg)))
    for err in queue.errors():  # escaped by the queue: no forged log lines
        log.error("%s", err)
    dead = queue.dead_lettered()
    if dead > cluster.dead_lettered:
        latest = queue.dead_letters()[-1:] or [""]
        log.error(
            "cluster %s put %d element(s) aside that no worker may run (%d in all; see %s): %s",
            cluster.name, dead - cluster.dead_lettered, dead, queue.keys.deadletter, latest[0][:300],
        )
        cluster.dead_lettered = dead


def fail_if_server_gone(cluster: "DockerCluster") -> None:
    """Redis does not answer: if the provider knows its server is gone for good (an exited
    container), fail the pending tasks now rather than after the listener's patience."""
    try:
        reason = cluster.driver.server_lost_reason(cluster.spec)
    except Exception as exc:  # noqa: BLE001 - the listener's own timeout still applies
        log.debug("could not tell whether the server of %s is gone: %s", cluster.name, exc)
        return
    listener = cluster.listener
    if reason and listener is not None:
        log.error("cluster %s: the Redis server is gone: %s", cluster.name, reason)
        listener.fail_all(f"the cluster's Redis server is gone: {reason}")


def why_lost(cluster: "DockerCluster", worker_id: str) -> str:
    """The provider's account of a lost worker's container (out of memory, killed), if any."""
    try:
        reason = cluster.driver.lost_worker_reason(cluster.spec, worker_id)
    except Exception as exc:  # noqa: BLE001 - an explanation must never stop the reaper
        log.debug("could not explain the loss of worker %s: %s", worker_id, exc)
        return ""
    return f": {reason}" if reason else ""
