"""DockerProvider against the local provider and Dask's LocalCluster: cold start, map tasks/s, joins.

    .venv/bin/python bench/docker_cluster.py                 # N=500, 2 workers, one repetition
    .venv/bin/python bench/docker_cluster.py --n 1000 --reps 2
    .venv/bin/python bench/docker_cluster.py --only docker,docker-plain   # TLS (default) vs tls=False

Needs a Docker engine and the test images (`python scripts/prepare_docker.py`). Every runner gets
2 workers: DockerProvider as 2 single-slot worker containers (the test worker image with this
checkout's package, no install at start), the local provider as 2 worker processes, Dask as a
LocalCluster of 2 single-threaded worker processes. Per runner, as bench/throughput.py measures
them: cold start (runner enter -> first result), map tasks/s of `noop.map(range(N))` on the warm
runner, and teardown. For DockerProvider also, per worker container: `docker run` (the engine's
StartedAt) -> the worker joined the cluster's Redis (polled every 10 ms).

One Prefect server serves every runner; containers reach it through a relay on the Docker bridge's
gateway (the server listens on 127.0.0.1). Ratios are from the same run. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import throughput  # noqa: E402

RUNNERS = ("local", "docker", "dask")
KINDS = (*RUNNERS, "docker-plain")  # docker-plain: DockerProvider(tls=False), for the TLS cost


def docker_parts(client, tracker) -> dict:
    """Provider, container and tags of a cluster whose every object carries the tracker's label."""
    import json

    from containers import image_of, manifest_path
    from docker_support import build_dev_worker_image, docker_cluster_kwargs

    image = build_dev_worker_image(client, image_of(json.loads(manifest_path().read_text()), "worker"))
    return docker_cluster_kwargs(tracker, image)


def make_runner(kind: str, workers: int, parts: dict | None):
    if kind == "local":
        return throughput.make_runner("ours", workers)
    if kind == "dask":
        return throughput.make_runner("dask", workers)
    from prefect_dockerparallel import DockerParallelTaskRunner, DockerProvider

    parts = dict(parts or {})
    if kind == "docker-plain":
        parts["provider"] = DockerProvider(start_timeout=60, tls=False)
    return DockerParallelTaskRunner(workers=workers, **parts)


def join_times(client, parts: dict, workers: int) -> list[float]:
    """Seconds from each worker container's start (engine clock) to its join (seen in Redis)."""
    from prefect_dockerparallel import DockerCluster

    cluster = DockerCluster(workers=workers, idle_timeout=60, **parts)
    joined_at: list[float] = []
    with cluster:
        deadline = time.time() + 180
        while len(joined_at) < workers and time.time() < deadline:
            seen = cluster.queue.joined_slots() if cluster.queue is not None else 0
            joined_at.extend([time.time()] * (seen - len(joined_at)))
            time.sleep(0.01)  # a sampling interval, not synchronization
        started = sorted(
            datetime.datetime.fromisoformat(c.attrs["State"]["StartedAt"][:26].rstrip("Z") + "+00:00").timestamp()
            for c in client.containers.list(filters={"label": [f"dockerparallel-cluster={cluster.name}",
                                                                "dockerparallel-role=worker"]})
        )
    return [round(j - s, 2) for j, s in zip(sorted(joined_at), started)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", default=",".join(RUNNERS), help="comma list of " + ",".join(KINDS))
    args = parser.parse_args()

    import docker

    from containers import ContainerTracker
    from docker_support import containers_prefect_api, ship_by_value

    import _bench_tasks  # noqa: F401

    # The worker image has no bench/: its tasks, and the flow (which the flow run's context
    # carries, with the module globals it uses), travel by value.
    for module in ("_bench_tasks", "throughput", "_common"):
        ship_by_value(module)

    client = docker.from_env()
    tracker = ContainerTracker(client, test_name="bench/docker_cluster.py")
    _common.setup_prefect()
    api_url = containers_prefect_api(client).api_url
    os.environ["PREFECT_API_URL"] = api_url
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):  # prefect read the loopback URL at import
        run_all(args, client, tracker)


def run_all(args: argparse.Namespace, client, tracker) -> None:
    kinds = [k for k in args.only.split(",") if k]
    parts = docker_parts(client, tracker) if any(k.startswith("docker") for k in kinds) else None
    print(f"Prefect API {os.environ['PREFECT_API_URL']}; N={args.n}; workers={args.workers}; "
          f"cpus={os.cpu_count()}", flush=True)

    rows: list[dict] = []
    try:
        for rep in range(args.reps):
            for kind in kinds:
                _common.wait_for_quiet_server()
                row = throughput.run_one_with(make_runner(kind, args.workers, parts), kind, args.n)
                rows.append(row)
                print(f"rep {rep} {kind:7s} cold start {row['cold_start_from_enter_s']:5.2f} s from runner enter; "
                      f"map {row['map_tasks_per_s']:7.1f} tasks/s ({row['map_seconds']:.2f} s); "
                      f"teardown {row['teardown_s']:.2f} s", flush=True)
            if "docker" in kinds:
                joins = join_times(client, parts, args.workers)
                rows.append({"runner": "join", "joins": joins})
                print(f"rep {rep} docker  container start -> worker joined: {joins} s", flush=True)
    finally:
        left = tracker.cleanup()  # only this run's objects, also after a failure
        if any(left.values()):
            print(f"could not remove: {left}", flush=True)

    def med(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in rows if r["runner"] == kind)

    print("\nsummary (median over repetitions)")
    for kind in kinds:
        print(f"  {kind:7s} cold start {med(kind, 'cold_start_from_enter_s'):.2f} s, "
              f"map {med(kind, 'map_tasks_per_s'):.1f} tasks/s")
    if "docker" in kinds:
        for other in (k for k in kinds if k != "docker"):
            print(f"  docker/{other}: map {med('docker', 'map_tasks_per_s') / med(other, 'map_tasks_per_s'):.2f}x, "
                  f"cold start {med('docker', 'cold_start_from_enter_s'):.2f} s vs "
                  f"{med(other, 'cold_start_from_enter_s'):.2f} s")
        joins = [j for r in rows if r["runner"] == "join" for j in r["joins"]]
        print(f"  per-container join: {_common.spread(joins)} s")


if __name__ == "__main__":
    main()
