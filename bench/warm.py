"""Cold start of a flow run on a new cluster against runs that attach to a warm one.

    .venv/bin/python bench/warm.py                 # local provider and DockerProvider
    .venv/bin/python bench/warm.py --only local

Three flow runs in a row per provider, each `noop.submit(-1).result()` then a map of N no-op
tasks, on `DockerParallelTaskRunner(workers=2, keep_alive=60)`: run 1 provisions, runs 2 and 3
attach. Printed: runner enter -> first result per run, and the ratio of run 1 to the median of
runs 2-3. The warm clusters are stopped at the end. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import docker_cluster  # noqa: E402
import throughput  # noqa: E402


def runs(kind: str, parts: dict, n: int) -> list[float]:
    from prefect_dockerparallel import DockerCluster, DockerParallelTaskRunner

    colds = []
    for _ in range(3):
        _common.wait_for_quiet_server()
        runner = DockerParallelTaskRunner(workers=2, keep_alive=60, **parts)
        colds.append(throughput.run_one_with(runner, kind, n)["cold_start_from_enter_s"])
    DockerCluster(workers=2, keep_alive=60, **parts).reconnect().stop()  # same config: same name
    return colds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--only", default="local,docker")
    args = parser.parse_args()
    kinds = [k for k in args.only.split(",") if k]

    tracker = None
    if "docker" in kinds:
        import docker

        from containers import ContainerTracker
        from docker_support import containers_prefect_api, ship_by_value

        import _bench_tasks  # noqa: F401

        for module in ("_bench_tasks", "throughput", "_common"):
            ship_by_value(module)
        client = docker.from_env()
        tracker = ContainerTracker(client, test_name="bench/warm.py")
    _common.setup_prefect()
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api_url = containers_prefect_api(client).api_url if tracker else os.environ["PREFECT_API_URL"]
    try:
        with temporary_settings({PREFECT_API_URL: api_url}):
            for kind in kinds:
                parts = docker_cluster.docker_parts(client, tracker) if kind == "docker" else {}
                colds = runs(kind, parts, args.n)
                print(f"{kind:7s} runner enter -> first result: run 1 {colds[0]:.2f} s, runs 2-3 "
                      f"{colds[1]:.2f} / {colds[2]:.2f} s; run 1 / warm median "
                      f"{colds[0] / statistics.median(colds[1:]):.1f}x", flush=True)
    finally:
        if tracker is not None:
            tracker.cleanup()


if __name__ == "__main__":
    main()
