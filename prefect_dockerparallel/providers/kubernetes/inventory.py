"""Pure decisions over API objects (dicts): Job generations to scale, clusters found by label.

Kept apart from the driver so the rules — which a real cluster exercises only rarely (a worker
retiring, then a scale-up; a server pod gone) — read and test on their own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import objects as O
from ...specs import ClusterRecord

STARTING_GRACE = 300.0  # a cluster younger than this without a server pod is starting, not dead


@dataclass
class WorkerPlan:
    """API writes that bring the worker pods of a cluster to `count`."""

    patches: list[tuple[str, int]] = field(default_factory=list)  # (job name, parallelism)
    deletes: list[str] = field(default_factory=list)  # finished jobs with no active pod
    create: int = 0  # parallelism of a new Job generation (0: none)
    generation: int = 0
    failed: str | None = None  # a Job gave up (BackoffLimitExceeded): do not make another


class WorkerFailures:
    """Failed worker pods per cluster with Kubernetes' reason, each reported once."""

    def __init__(self) -> None:
        self._seen: dict[str, dict[str, str]] = {}  # cluster -> pod name -> "pod: reason"

    def add(self, cluster: str, pod: str, reason: str) -> str | None:
        """The failure's description when it is new, None when this pod was recorded before."""
        seen = self._seen.setdefault(cluster, {})
        if pod in seen:
            return None
        seen[pod] = f"{pod}: {reason}"
        return seen[pod]

    def of(self, cluster: str) -> list[str]:
        return list(self._seen.get(cluster, {}).values())

    def of_host(self, cluster: str, host: str) -> str | None:
        """The failure of the one pod whose name (as a hostname, cut at 40) is `host`."""
        found = [why for pod, why in self._seen.get(cluster, {}).items() if pod[:40] == host]
        return found[0] if len(found) == 1 else None

    def forget(self, cluster: str) -> None:
        self._seen.pop(cluster, None)


def plan_workers(jobs: list[dict[str, Any]], count: int) -> WorkerPlan:
    """A work-queue Job makes no new pod once one of its pods succeeded (a worker retired on
    scale-down), so scaling up after that needs a new generation; pods of older generations
    keep running and count toward `count` (their parallelism is lowered if there are too many)."""
    plan = WorkerPlan()
    jobs = sorted(jobs, key=generation)
    usable = [j for j in jobs if job_usable(j)]
    current = usable[-1] if usable else None
    remaining = count
    for job in jobs:
        if job is current:
            continue
        failed = job_condition(job, "Failed")
        if failed:
            plan.failed = failed
            return plan
        active = int(job["status"].get("active") or 0)
        keep = min(active, remaining)
        remaining -= keep
        if active == 0:
            plan.deletes.append(job["metadata"]["name"])
        elif keep < active:  # too many pods: lower parallelism so the controller removes some
            plan.patches.append((job["metadata"]["name"], keep))
    if current is not None:
        if int(current["spec"].get("parallelism") or 0) != remaining:
            plan.patches.append((current["metadata"]["name"], remaining))
    elif remaining > 0:
        plan.create = remaining
        plan.generation = generation(jobs[-1]) + 1 if jobs else 0
    return plan


def generation(job: dict[str, Any]) -> int:
    try:
        return int(job["metadata"]["labels"].get(O.GENERATION_LABEL, 0))
    except (TypeError, ValueError):
        return 0


def job_condition(job: dict[str, Any], kind: str) -> str | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            return cond.get("reason") or cond.get("message") or kind
    return None


def job_usable(job: dict[str, Any]) -> bool:
    """Whether raising parallelism on this Job still creates pods."""
    status = job.get("status") or {}
    return not (
        int(status.get("succeeded") or 0) > 0
        or job_condition(job, "Complete")
        or job_condition(job, "Failed")
        or job["metadata"].get("deletionTimestamp")
    )


def age(meta: dict[str, Any], now: float | None = None) -> float:
    stamp = meta.get("creationTimestamp")
    if not stamp:
        return 0.0
    created = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    return (time.time() if now is None else now) - created.timestamp()


def summarize(objects: list[dict[str, Any]], provider: str) -> list[ClusterRecord]:
    """Clusters among labelled objects. Alive: the server pod is Pending or Running, or the
    cluster is younger than STARTING_GRACE and has no server pod yet."""
    found: dict[str, dict[str, Any]] = {}
    for obj in objects:
        meta = obj["metadata"]
        labels = meta.get("labels") or {}
        entry = found.setdefault(
            labels.get(O.CLUSTER_LABEL), {"flow_run": None, "resources": [], "alive": False, "young": False, "server": False}
        )
        entry["flow_run"] = entry["flow_run"] or labels.get(O.FLOW_RUN_LABEL)
        entry["resources"].append(f"{obj['kind']}/{meta['name']}")
        if obj["kind"] == "Pod" and labels.get(O.ROLE_LABEL) == "server":
            entry["server"] = True
            if not meta.get("deletionTimestamp"):
                entry["alive"] |= (obj.get("status") or {}).get("phase") in ("Pending", "Running")
        if obj["kind"] == "Secret" and age(meta) < STARTING_GRACE:
            entry["young"] = True
    return [
        ClusterRecord(name, provider, e["flow_run"], tuple(e["resources"]), e["alive"] or (e["young"] and not e["server"]))
        for name, e in sorted(found.items())
    ]
