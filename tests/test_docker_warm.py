"""A warm cluster on the real Docker engine: later flow runs attach to the same containers, and
the lease removes everything once no run renews it."""

from __future__ import annotations

import time

from prefect import flow, task

from containers import docker_engine, docker_tracker, test_images  # noqa: F401
from docker_support import cluster_objects, container_api, dev_worker_image, docker_cluster_kwargs, ship_by_value  # noqa: F401
from helpers import wait_until

from prefect_dockerparallel import DockerParallelTaskRunner

ship_by_value(__name__)
KEEP_ALIVE = 10


@task
def triple(x: int) -> int:
    return 3 * x


def test_runs_2_and_3_attach_to_the_same_containers_and_the_lease_ends_the_cluster(
    docker_engine, docker_tracker, dev_worker_image, container_api  # noqa: F811
):
    kwargs = docker_cluster_kwargs(docker_tracker, dev_worker_image, worker_cpu=512, worker_memory=256)
    names: list[str] = []
    seen: list[set[str]] = []

    @flow(task_runner=DockerParallelTaskRunner(workers=2, idle_timeout=5, keep_alive=KEEP_ALIVE, **kwargs))
    def triples(n: int) -> list[int]:
        from prefect.context import FlowRunContext

        values = triple.map(range(n)).result()
        names.append(FlowRunContext.get().task_runner.docker_cluster.name)
        return values

    for n in (4, 5, 6):
        assert triples(n) == [3 * i for i in range(n)]
        # after each run: the cluster is still there (detached, not stopped)
        seen.append({c.id for c in docker_engine.containers.list(filters={"label": f"dockerparallel-cluster={names[-1]}"})})
    assert len(set(names)) == 1, names
    name = names[0]
    assert len(seen[0]) == 3 and seen[0] == seen[1] == seen[2], seen  # server + 2 workers, none new
    detached_at = time.monotonic()
    # the lease runs out KEEP_ALIVE s after the last detach; the server, the workers and then the
    # janitor's removal of containers and network follow within 10 s (the bound)
    assert wait_until(lambda: not any(cluster_objects(docker_engine, name).values()), KEEP_ALIVE + 10), (
        cluster_objects(docker_engine, name))
    print(f"cluster gone {time.monotonic() - detached_at:.1f} s after the last run detached")
