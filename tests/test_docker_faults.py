"""Faults in real containers, with Prefect flows on DockerProvider (the docker stop of a busy 4-slot
container is in test_docker_stop.py).

- `docker kill` of a worker container mid-task: its task runs again elsewhere, every result is right
  and the Prefect API shows every task run Completed;
- a task past its container's memory limit: the container is OOM-killed, the future ends Crashed
  with a message that says out of memory and names the container, siblings complete;
- `docker network disconnect` mid-task: the lease expires, the task runs elsewhere, and the cut-off
  worker's late result (once it is reconnected) is dropped, not delivered twice;
- the server container killed mid-flow: the flow fails with a clear error in bounded time and
  nothing of the cluster is left.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections import Counter
from typing import Any

import pytest
from prefect import flow, task

from containers import OWNER_LABEL, docker_engine, docker_tracker, test_images  # noqa: F401
from docker_support import (  # noqa: F401
    cluster_objects,
    container_api,
    dev_worker_image,
    docker_cluster_kwargs,
    ship_by_value,
)
from helpers import wait_until

from prefect_dockerparallel import DockerParallelTaskRunner
from prefect_dockerparallel.runner.futures import ResultListener

ship_by_value(__name__)
NOTHING = {"containers": [], "networks": [], "volumes": []}


@task
def marked(x: int, seconds: float) -> tuple[int, str]:
    print(f"START {x} on {socket.gethostname()}", flush=True)
    time.sleep(seconds)
    print(f"DONE {x} on {socket.gethostname()}", flush=True)
    return x * x, socket.gethostname()


@task
def hog(megabytes: int) -> int:
    chunks = [bytearray(2**20) for _ in range(megabytes)]  # zero-filled: resident, not lazy
    return len(chunks)


class Fault(threading.Thread):
    """Injects a fault from the test process, once a task has started in one of this test's worker
    containers (found by the tracker's label and `marker` in its log). A thread, not code in the
    flow: the flow is pickled to the workers, so it must not hold an engine client."""

    def __init__(self, client: Any, owner: str, marker: bytes, inject: Any) -> None:
        super().__init__(daemon=True)
        self.client, self.owner, self.marker, self.inject = client, owner, marker, inject
        self.victim: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def workers(self) -> list[Any]:
        return self.client.containers.list(filters={"label": [f"{OWNER_LABEL}={self.owner}", "dockerparallel-role=worker"]})

    def run(self) -> None:
        try:
            self.victim = wait_until(lambda: next((c for c in self.workers() if self.marker in c.logs()), None), 180)
            if self.victim is not None:
                self.inject(self, self.victim)
        except BaseException as exc:  # noqa: BLE001 - reported by check()
            self.error = exc
        finally:
            self.done.set()

    def check(self) -> Any:
        assert self.done.wait(60) and self.error is None, self.error
        assert self.victim is not None, f"no task started ({self.marker!r})"
        return self.victim

    @property
    def cluster(self) -> str:
        return self.victim.labels["dockerparallel-cluster"]


def _task_run_states(flow_run_id: Any) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return sorted(r.state.type.value for r in runs)


def test_docker_kill_of_a_worker_mid_task(docker_engine, docker_tracker, dev_worker_image, container_api, caplog):
    caplog.set_level(logging.WARNING, logger="prefect_dockerparallel")
    runner = DockerParallelTaskRunner(workers=2, idle_timeout=60, **docker_cluster_kwargs(docker_tracker, dev_worker_image))

    @flow(task_runner=runner)
    def sweep():
        from prefect.runtime import flow_run

        return flow_run.id, marked.map(range(6), seconds=3).result()

    fault = Fault(docker_engine, docker_tracker.owner, b"START ", lambda _, c: c.kill())
    fault.start()
    flow_run_id, results = sweep()
    fault.check()
    assert [r[0] for r in results] == [i * i for i in range(6)]
    assert _task_run_states(flow_run_id) == ["COMPLETED"] * 6
    lost = [r.getMessage() for r in caplog.records if "was lost" in r.getMessage()]
    assert any(f"container {fault.victim.name} was killed (SIGKILL, exit code 137)" in m for m in lost), lost
    assert cluster_objects(docker_engine, fault.cluster) == NOTHING


def test_a_task_past_its_memory_limit_crashes_naming_the_oom_killed_container(
    docker_engine, docker_tracker, dev_worker_image, container_api
):
    kwargs = docker_cluster_kwargs(docker_tracker, dev_worker_image, worker_memory=400)
    runner = DockerParallelTaskRunner(workers=2, idle_timeout=60, max_attempts=1, **kwargs)

    @flow(task_runner=runner)
    def sweep():
        big = hog.submit(1024)
        small = marked.map(range(6), seconds=0.5)
        big.wait(180)
        return big.state, [s.result() for s in small]

    state, results = sweep()
    assert state.is_crashed(), state
    assert "killed for running out of memory" in state.message and "memory limit of 400 MiB" in state.message, state.message
    assert re.search(r"after 1 attempt: container dp-[a-z0-9-]+-w-[0-9a-f]{6} was killed", state.message), state.message
    assert [r[0] for r in results] == [i * i for i in range(6)]
    assert not any(docker_tracker.leftovers().values()), docker_tracker.leftovers()


DELIVERED: Counter[str] = Counter()  # result envelopes the listener received, by envelope id


def test_a_worker_cut_off_the_network_mid_task(docker_engine, docker_tracker, dev_worker_image, container_api, monkeypatch):
    """The lease of the cut-off worker expires, the task runs on the other container; reconnected,
    the cut-off worker finishes and acks too: its late result reaches the listener and is dropped."""
    DELIVERED.clear()
    deliver = ResultListener._deliver

    def counting(self: ResultListener, raw: bytes) -> None:
        DELIVERED[self.signer.open(raw).ident] += 1
        deliver(self, raw)

    monkeypatch.setattr(ResultListener, "_deliver", counting)
    runner = DockerParallelTaskRunner(workers=2, idle_timeout=90, **docker_cluster_kwargs(docker_tracker, dev_worker_image))

    @flow(task_runner=runner)
    def one():
        from prefect.runtime import flow_run

        value = marked.submit(7, 12).result()
        deadline = time.monotonic() + 120
        while sum(DELIVERED.values()) < 2 and time.monotonic() < deadline:  # the late result
            time.sleep(0.2)
        return flow_run.id, value

    def cut_off(fault: Fault, container: Any) -> None:
        network = fault.client.networks.get(f"dp-{fault.cluster}")
        network.disconnect(container)
        try:
            fault.rerun = wait_until(lambda: next((c for c in fault.workers()
                                                   if c.id != container.id and b"START 7" in c.logs()), None), 90)
        finally:
            network.connect(container)

    fault = Fault(docker_engine, docker_tracker.owner, b"START 7", cut_off)
    fault.start()
    flow_run_id, value = one()
    fault.check()
    assert fault.rerun is not None, "the task did not run again after the cut-off worker's lease expired"
    assert value[0] == 49
    assert list(DELIVERED.values()) == [2], DELIVERED  # one envelope id, two results: the first one won
    assert _task_run_states(flow_run_id) == ["COMPLETED"]
    assert cluster_objects(docker_engine, fault.cluster) == NOTHING


def test_the_server_container_killed_mid_flow_fails_the_flow_clearly(
    docker_engine, docker_tracker, dev_worker_image, container_api
):
    runner = DockerParallelTaskRunner(workers=2, idle_timeout=60, **docker_cluster_kwargs(docker_tracker, dev_worker_image))

    @flow(task_runner=runner)
    def doomed():
        return marked.map(range(6), seconds=5).result()

    def kill_server(fault: Fault, _: Any) -> None:
        fault.client.containers.get(f"dp-{fault.cluster}-server").kill()
        fault.killed_at = time.monotonic()

    fault = Fault(docker_engine, docker_tracker.owner, b"START ", kill_server)
    fault.start()
    with pytest.raises(Exception, match=r"the cluster's Redis server is gone: container dp-[a-z0-9-]+-server was "
                                        r"killed \(SIGKILL, exit code 137\)") as err:
        doomed()
    failed_after = time.monotonic() - fault.killed_at
    fault.check()
    print(f"server killed -> flow failed, teardown included, in {failed_after:.1f} s: {type(err.value).__name__}")
    assert cluster_objects(docker_engine, fault.cluster) == NOTHING
