"""SIGTERM of a multi-slot worker (docker stop, ECS StopTask, scale-in): no slot is respawned,
claimed tasks go back to the queue at once, the container exits by itself, every result is right.

The bug this guards against: the supervisor answered SIGTERM by respawning its slots ("slot
process exited with 143; starting a replacement"), replacements could claim tasks, and the
container was SIGKILLed 10 s later.
"""

from __future__ import annotations

import logging
import signal
import time

from containers import docker_engine, docker_tracker, test_images  # noqa: F401
from docker_support import container_api, dev_worker_image, docker_cluster_kwargs, ship_by_value  # noqa: F401
from helpers import cluster_processes, wait_until

from prefect_dockerparallel import DockerCluster
from prefect_dockerparallel.specs import ContainerSpec

ship_by_value(__name__)


def nap(x: int, seconds: float) -> int:
    import time

    time.sleep(seconds)
    return x * 10


def test_sigterm_of_a_4_slot_worker_process_respawns_nothing_and_hands_tasks_back(no_leftover_processes, caplog):
    caplog.set_level(logging.WARNING, logger="prefect_dockerparallel")
    cluster = DockerCluster(container=ContainerSpec(workers_per_container=4, install_self=None), workers=4,
                            idle_timeout=30, heal=False)
    with cluster:
        assert wait_until(lambda: cluster.worker_numbers().running == 4, 60)
        with cluster.executor() as ex:
            futures = [ex.submit(nap, i, 10) for i in range(4)]
            assert wait_until(lambda: cluster.queue.slot_usage() == (4, 4), 30), cluster.queue.slot_usage()
            [supervisor] = [p for p in cluster_processes(cluster.name) if p.environ().get("DOCKERPARALLEL_SLOTS") == "4"]
            supervisor.send_signal(signal.SIGTERM)
            assert supervisor.wait(timeout=30) == 143  # exited by itself, nothing respawned
            # handed back by the slots themselves: the leases (10 s) have not expired yet
            assert cluster.queue.pending() == 4 and cluster.queue.slot_usage() == (0, 0)
            assert "starting a replacement" not in cluster.logs()
            cluster.update()  # a new container takes them: every result is right
            assert [f.result(timeout=120) for f in futures] == [0, 10, 20, 30]
    assert not [r for r in caplog.records if "was lost" in r.getMessage()]  # no lease had to expire


def test_docker_stop_of_a_busy_4_slot_container_mid_task(docker_engine, docker_tracker, dev_worker_image, caplog):
    """8 slots in two 4-slot containers, all busy; `docker stop -t 3` of one: it exits with 143 on its
    own (137 would mean docker's SIGKILL after 3 s), its 4 tasks run on the other container."""
    caplog.set_level(logging.WARNING, logger="prefect_dockerparallel")
    kwargs = docker_cluster_kwargs(docker_tracker, dev_worker_image, slots=4, worker_cpu=512, worker_memory=256)
    cluster = DockerCluster(workers=8, idle_timeout=30, heal=False, **kwargs)
    with cluster:
        assert wait_until(lambda: cluster.worker_numbers().running == 8, 180), cluster.worker_numbers()
        with cluster.executor() as ex:
            futures = [ex.submit(nap, i, 8) for i in range(8)]
            assert wait_until(lambda: cluster.queue.slot_usage() == (8, 8), 60), cluster.queue.slot_usage()
            victim = docker_engine.containers.list(
                filters={"label": [f"dockerparallel-cluster={cluster.name}", "dockerparallel-role=worker"]})[0]
            started = time.monotonic()
            victim.stop(timeout=3)
            stop_seconds = time.monotonic() - started
            victim.reload()
            assert victim.attrs["State"]["ExitCode"] == 143, victim.attrs["State"]
            assert cluster.queue.pending() == 4  # given back at once; the other 4 slots are busy
            logs = victim.logs().decode()
            assert "got SIGTERM" in logs and "starting a replacement" not in logs
            assert [f.result(timeout=120) for f in futures] == [i * 10 for i in range(8)]
    print(f"docker stop of a busy 4-slot container: {stop_seconds:.2f} s")
    assert not [r for r in caplog.records if "was lost" in r.getMessage()]
