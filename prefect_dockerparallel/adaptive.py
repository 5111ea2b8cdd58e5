"""Adaptive scaling: as many worker slots as the work needs, between min_workers and max_workers.

The driver's heartbeat thread asks `Autoscaler.decide` once per beat with what Redis shows:
tasks waiting in the queue, slots joined, slots busy. Up: at once, to the busy slots plus the
waiting tasks (capped at max_workers), since a waiting task is the one cost a user sees. Down: only
after `scale_down_after` seconds in which no task waited and some slot sat idle, to the busy slots
(at least min_workers) — and by retirement, not by stopping containers: an idle slot takes a
retirement token and exits on its own, a busy one finishes first, so scale-down never interrupts
a running task (a container leaves once all its slots have). That is why single-slot containers
scale down best: a 4-slot container stops only when all 4 of its slots retired.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class AdaptivePolicy:
    min_workers: int
    max_workers: int
    scale_down_after: float = 60.0

    @classmethod
    def from_fields(cls, min_workers: int | None, max_workers: int | None,
                    scale_down_after: float | None = None) -> "AdaptivePolicy | None":
        """The policy the fields ask for (None: fixed size), or a ValueError naming the field."""
        if min_workers is None and max_workers is None:
            return None
        if max_workers is None:
            raise ValueError(f"min_workers={min_workers} needs max_workers too: set the largest number of "
                             "worker slots adaptive scaling may start")
        low = 0 if min_workers is None else min_workers
        for name, value in (("min_workers", low), ("max_workers", max_workers)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name}={value!r} is invalid: give a number of worker slots, an integer >= 0")
        if max_workers < 1 or low > max_workers:
            raise ValueError(f"max_workers={max_workers} is invalid: it must be >= 1 and >= min_workers ({low})")
        after = 60.0 if scale_down_after is None else float(scale_down_after)
        if after < 0:
            raise ValueError(f"scale_down_after={scale_down_after!r} is invalid: give seconds >= 0")
        return cls(low, max_workers, after)

    def clamp(self, n: int) -> int:
        return max(self.min_workers, min(self.max_workers, n))


@dataclass
class Autoscaler:
    """Decides the next worker-slot target; remembers the count over time for the summary."""

    policy: AdaptivePolicy
    idle_since: float | None = None
    history: list[tuple[float, int]] = field(default_factory=list)  # (monotonic time, target)

    def decide(self, expected: int, pending: int, joined: int, busy: int, now: float | None = None) -> int | None:
        """The new target number of slots, or None to leave it."""
        now = time.monotonic() if now is None else now
        if not self.history:
            self.history.append((now, expected))
        wanted = self.policy.clamp(busy + pending)
        if pending > 0:
            self.idle_since = None
            return self._record(now, wanted) if wanted > expected else None
        if wanted >= expected or joined <= busy:  # no slot idle: nothing to give back
            self.idle_since = None
            return None
        if self.idle_since is None:
            self.idle_since = now
            return None
        if now - self.idle_since < self.policy.scale_down_after:
            return None
        self.idle_since = None
        return self._record(now, wanted)

    def _record(self, now: float, target: int) -> int:
        self.history.append((now, target))
        return target

    def container_seconds(self, now: float, containers_for: "Callable[[int], int]") -> float:
        """Container-seconds implied by the targets over time (an estimate: a container starts
        a few seconds after its target, and a retired one leaves when its task is done)."""
        total = 0.0
        for (t0, n), (t1, _) in zip(self.history, [*self.history[1:], (now, 0)]):
            total += max(0.0, t1 - t0) * containers_for(n)
        return total

    def timeline(self, started_at: float | None) -> list[tuple[float, int]]:
        """(seconds since the cluster started, slots) for each change."""
        origin = started_at if started_at is not None else (self.history[0][0] if self.history else 0.0)
        return [(round(t - origin, 1), n) for t, n in self.history]


def step(cluster: Any) -> None:
    """One scaling step of a DockerCluster (its heartbeat thread calls it once per beat): grow at
    once when tasks wait, shrink idle slots by retirement after `scale_down_after`."""
    queue, scaler = cluster.queue, cluster.autoscaler
    if queue is None or scaler is None:
        return
    joined, busy = queue.slot_usage()
    with cluster._lock:
        pending = queue.pending()
        target = scaler.decide(cluster.expected, pending, joined, busy)
        if target is None or cluster.queue is None:
            return
        queue.cancel_retirement()
        if target > cluster.expected:
            cluster.decision_log.info("adaptive: %d task(s) waiting, %d slot(s) busy: scaling %s up from %d to %d "
                                      "worker slots", pending, busy, cluster.name, cluster.expected, target)
            cluster.set_worker_number(target)
            return
        cluster.decision_log.info("adaptive: %d slot(s) idle for %.0f s: scaling %s down from %d to %d worker slots",
                                  joined - busy, scaler.policy.scale_down_after, cluster.name, cluster.expected, target)
        cluster.expected = target
        queue.retire(joined - target)  # idle slots leave on their own; busy ones finish first
