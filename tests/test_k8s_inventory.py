"""The driver's pure decisions: Job generations when scaling, live vs dead clusters."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from prefect_dockerparallel.providers.kubernetes.inventory import WorkerFailures, plan_workers, summarize


def job(name: str, gen: int, parallelism: int, active: int = 0, succeeded: int = 0, failed: bool = False) -> dict:
    status: dict = {"active": active, "succeeded": succeeded}
    if failed:
        status["conditions"] = [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]
    return {"metadata": {"name": name, "labels": {"dockerparallel-generation": str(gen)}},
            "spec": {"parallelism": parallelism}, "status": status}


def test_no_job_creates_generation_zero() -> None:
    plan = plan_workers([], 3)
    assert (plan.create, plan.generation, plan.patches, plan.deletes) == (3, 0, [], [])
    assert plan_workers([], 0).create == 0


def test_a_usable_job_is_patched_only_when_parallelism_differs() -> None:
    assert plan_workers([job("w", 0, 2, active=2)], 5).patches == [("w", 5)]
    assert plan_workers([job("w", 0, 5, active=5)], 5).patches == []


def test_after_a_success_the_next_generation_makes_up_the_difference() -> None:
    old = job("w", 0, 3, active=2, succeeded=1)  # one worker retired; two still run
    plan = plan_workers([old], 4)
    assert (plan.create, plan.generation, plan.patches) == (2, 1, [])
    # Scaling down below the old generation's active pods lowers its parallelism.
    plan = plan_workers([old, job("w-1", 1, 2, active=2)], 1)
    assert plan.patches == [("w", 1), ("w-1", 0)] and plan.create == 0
    # A finished generation without pods is deleted.
    assert plan_workers([job("w", 0, 3, succeeded=3)], 1).deletes == ["w"]


def test_a_failed_job_stops_scaling() -> None:
    plan = plan_workers([job("w", 0, 2, failed=True)], 2)
    assert plan.failed == "BackoffLimitExceeded" and plan.create == 0


def _obj(kind: str, name: str, cluster: str, role: str, phase: str | None = None, age_s: float = 3600) -> dict:
    created = (datetime.now(timezone.utc) - timedelta(seconds=age_s)).strftime("%Y-%m-%dT%H:%M:%SZ")
    obj = {"kind": kind, "metadata": {"name": name, "creationTimestamp": created, "labels": {
        "dockerparallel-cluster": cluster, "dockerparallel-role": role, "dockerparallel-flow-run": f"run-{cluster}"}}}
    if phase:
        obj["status"] = {"phase": phase}
    return obj


def test_summarize_tells_live_from_dead_clusters() -> None:
    objects = [
        _obj("Secret", "dp-a", "a", "secret"), _obj("Pod", "dp-a-server", "a", "server", "Running"),
        _obj("Secret", "dp-b", "b", "secret"), _obj("Pod", "dp-b-server", "b", "server", "Succeeded"),
        _obj("Service", "dp-c-redis", "c", "server"),  # Secret already gone: dead
        _obj("Secret", "dp-d", "d", "secret", age_s=10),  # just created: starting
    ]
    records = {r.name: r for r in summarize(objects, "aks")}
    assert {n: r.alive for n, r in records.items()} == {"a": True, "b": False, "c": False, "d": True}
    assert records["b"].resources == ("Secret/dp-b", "Pod/dp-b-server") and records["b"].flow_run_id == "run-b"


def test_a_failed_worker_pod_is_reported_once_and_found_by_its_hostname() -> None:
    failures = WorkerFailures()
    long_name = "dp-a-cluster-name-of-forty-characters-workers-x1y2z"
    assert failures.add("c", long_name, "container exited with code 137 (OOMKilled)") == (
        f"{long_name}: container exited with code 137 (OOMKilled)")
    assert failures.add("c", long_name, "again") is None  # once per pod
    assert failures.of("c") == [f"{long_name}: container exited with code 137 (OOMKilled)"]
    assert failures.of_host("c", long_name[:40]) == failures.of("c")[0]  # hostnames are cut at 40
    assert failures.of_host("other", long_name[:40]) is None
    failures.add("c", long_name[:40] + "-twin", "Error")  # two pods share the cut name: no guess
    assert failures.of_host("c", long_name[:40]) is None
    failures.forget("c")
    assert failures.of("c") == []
