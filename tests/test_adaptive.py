"""Adaptive scaling (min_workers / max_workers): the policy alone, then on a real local cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import cluster_processes, wait_until
from prefect_dockerparallel import DockerCluster, DockerParallelTaskRunner
from prefect_dockerparallel.adaptive import AdaptivePolicy, Autoscaler

# -- the policy --------------------------------------------------------------------------------


def test_scales_up_at_once_to_the_waiting_work_capped_at_max() -> None:
    scaler = Autoscaler(AdaptivePolicy(0, 4, scale_down_after=10))
    assert scaler.decide(expected=0, pending=3, joined=0, busy=0, now=0) == 3
    assert scaler.decide(expected=3, pending=3, joined=0, busy=0, now=1) is None  # already starting
    assert scaler.decide(expected=3, pending=50, joined=3, busy=3, now=2) == 4  # capped
    assert scaler.decide(expected=4, pending=50, joined=4, busy=4, now=3) is None


def test_scales_down_only_after_idle_slots_stayed_idle_for_scale_down_after() -> None:
    scaler = Autoscaler(AdaptivePolicy(1, 4, scale_down_after=10))
    assert scaler.decide(expected=4, pending=0, joined=4, busy=2, now=0) is None  # idle from now
    assert scaler.decide(expected=4, pending=0, joined=4, busy=2, now=9.9) is None
    assert scaler.decide(expected=4, pending=0, joined=4, busy=2, now=10) == 2  # to the busy slots
    # new work resets the idle clock
    assert scaler.decide(expected=2, pending=0, joined=2, busy=1, now=11) is None
    assert scaler.decide(expected=2, pending=1, joined=2, busy=2, now=15) == 3
    assert scaler.decide(expected=3, pending=0, joined=3, busy=1, now=16) is None
    assert scaler.decide(expected=3, pending=0, joined=3, busy=0, now=26) == 1  # never below min
    assert [n for _, n in scaler.history] == [4, 2, 3, 1]


def test_busy_slots_are_never_scaled_away() -> None:
    scaler = Autoscaler(AdaptivePolicy(0, 4, scale_down_after=0))
    for now in range(5):
        assert scaler.decide(expected=4, pending=0, joined=4, busy=4, now=now) is None


def test_container_seconds_follow_the_targets() -> None:
    scaler = Autoscaler(AdaptivePolicy(0, 4, scale_down_after=0), history=[(0.0, 0), (10.0, 4), (20.0, 0)])
    assert scaler.container_seconds(30.0, lambda n: -(-n // 2)) == 10 * 2  # 4 slots, 2 per container
    assert scaler.timeline(0.0) == [(0.0, 0), (10.0, 4), (20.0, 0)]


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"min_workers": 2}, "min_workers=2 needs max_workers"),
        ({"min_workers": 5, "max_workers": 3}, r"max_workers=3 is invalid: it must be >= 1 and >= min_workers \(5\)"),
        ({"max_workers": 0}, "max_workers=0 is invalid"),
        ({"min_workers": -1, "max_workers": 3}, "min_workers=-1 is invalid"),
        ({"max_workers": 3, "scale_down_after": -5}, "scale_down_after=-5 is invalid"),
    ],
)
def test_bad_bounds_are_refused_at_construction_naming_the_field(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DockerParallelTaskRunner(**fields)
    with pytest.raises(ValueError, match=message):
        DockerCluster(**fields)


def test_the_cluster_config_block_checks_the_bounds_too() -> None:
    from pydantic import ValidationError

    from prefect_dockerparallel import ClusterConfig, LocalProvider

    with pytest.raises(ValidationError, match="max_workers=2 is invalid"):
        ClusterConfig(provider=LocalProvider(), min_workers=3, max_workers=2)
    config = ClusterConfig(provider=LocalProvider(), min_workers=0, max_workers=8, scale_down_after=30)
    assert (config.min_workers, config.max_workers, config.scale_down_after) == (0, 8, 30)


# -- on a local cluster --------------------------------------------------------------------------


def _square_after(x: int, delay: float) -> int:
    import time

    time.sleep(delay)
    return x * x


def _wait_for_gate(path: str, marker: str) -> str:
    import os
    import time

    with open(marker, "a") as fh:  # one line per run of this task
        fh.write(f"{os.getpid()}\n")
    while not os.path.exists(path):
        time.sleep(0.02)
    return "done"


@pytest.mark.usefixtures("no_leftover_processes")
def test_from_zero_up_to_max_and_back_to_zero_with_every_result_right() -> None:
    """200 tasks on a cluster that starts with no worker: it grows to max_workers while tasks
    wait, and once the queue is empty and the slots sat idle, it retires them all."""
    with DockerCluster(min_workers=0, max_workers=3, scale_down_after=1, idle_timeout=20) as cluster:
        assert cluster.expected == 0 and cluster.worker_numbers().running == 0
        ex = cluster.executor()
        futures = [ex.submit(_square_after, i, 0.02) for i in range(200)]
        peak = {"n": 0}

        def grew_to_max() -> bool:
            peak["n"] = max(peak["n"], cluster.worker_numbers().running)
            return peak["n"] == 3

        assert wait_until(grew_to_max, 90), f"never reached 3 workers: {cluster.worker_numbers()}"
        assert [f.result(timeout=120) for f in futures] == [i * i for i in range(200)]
        assert wait_until(lambda: cluster.driver.worker_containers(cluster.spec).running == 0, 60), (
            f"idle workers were not retired: {cluster.worker_numbers()}")
        assert cluster.expected == 0 and cluster.worker_numbers().running == 0
        assert [n for _, n in cluster.autoscaler.history][0] == 0
        assert max(n for _, n in cluster.autoscaler.history) == 3
        assert cluster.autoscaler.history[-1][1] == 0
        # and it grows again from zero when new work arrives
        assert ex.submit(_square_after, 7, 0).result(timeout=90) == 49
        name = cluster.name
    assert not cluster_processes(name)


@pytest.mark.usefixtures("no_leftover_processes")
def test_scale_down_retires_idle_slots_and_never_interrupts_a_running_task(tmp_path: Path) -> None:
    """Two slots, one holding a long task: scale-down takes the idle slot only; the running task
    is not handed back or re-run (it ran exactly once) and its result arrives."""
    gate, marker = tmp_path / "gate", tmp_path / "runs"
    with DockerCluster(min_workers=0, max_workers=2, workers=2, scale_down_after=0.5, idle_timeout=20) as cluster:
        assert wait_until(lambda: cluster.worker_numbers().running == 2, 60)
        ex = cluster.executor()
        long = ex.submit(_wait_for_gate, str(gate), str(marker))
        assert wait_until(lambda: marker.exists(), 60)
        assert wait_until(lambda: cluster.driver.worker_containers(cluster.spec).running == 1, 60), (
            f"the idle slot was not retired: {cluster.worker_numbers()}")
        assert cluster.expected == 1 and not long.done()
        gate.write_text("open")
        assert long.result(timeout=60) == "done"
        assert len(marker.read_text().split()) == 1  # ran once: never interrupted, never re-queued


def _flow_module_tasks():
    from prefect import task

    @task
    def cube(x: int) -> int:
        return x**3

    return cube


@pytest.mark.usefixtures("prefect_server_session", "no_leftover_processes")
def test_a_flow_map_on_an_adaptive_runner_and_its_summary_shows_the_worker_count_over_time() -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client

    cube = _flow_module_tasks()

    @flow(task_runner=DockerParallelTaskRunner(min_workers=0, max_workers=2, scale_down_after=30, idle_timeout=20))
    def cubes(n: int) -> list[int]:
        return cube.map(range(n)).result()

    state = cubes(60, return_state=True)
    assert state.result() == [i**3 for i in range(60)]
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        def summary() -> str:
            found = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
            return next((a.data for a in found if "DockerParallel cluster" in str(a.data)), "")

        text = wait_until(summary, 60)
    assert "Worker slots over time (adaptive)" in text, text
    assert "| Worker slots over time (adaptive) | 0 s: 0 → " in text and " s: 2" in text, text
    # the decision is in the flow run's log, where the UI shows it
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    def decision_logged() -> bool:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        return any("adaptive: " in entry.message and "scaling" in entry.message for entry in logs)

    assert wait_until(decision_logged, 30)
