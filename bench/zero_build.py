"""Zero-build workers: container start -> worker joined, self-shipping vs a baked image; bytes shipped.

    .venv/bin/python bench/zero_build.py            # one cluster per image, one worker container each
    .venv/bin/python bench/zero_build.py --reps 2

Needs a Docker engine and the test images (`python scripts/prepare_docker.py`). Two worker images:
the `prefect` stand-in (Prefect, no prefect-dockerparallel: the bootstrap fetches the package from
Redis) and the `worker` image with this checkout's package baked in (the bootstrap finds the same
sources and fetches nothing). Per cluster: `docker run` of the worker (the engine's StartedAt) ->
the worker joined Redis (polled every 10 ms), and the seconds the bootstrap itself took (its log
line). Also: archive sizes and driver-side build times for the package and this repository's
`flows/` folder. The old start (`pip install prefect-dockerparallel` from PyPI) cannot be measured
here: no registry is reachable and the package is not on PyPI. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def one_cluster(client, tracker, image: str, server_image: str) -> dict:
    from containers import OWNER_LABEL
    from prefect_dockerparallel import DockerCluster, DockerProvider
    from prefect_dockerparallel.specs import ContainerSpec

    spec = ContainerSpec(image=image, server_image=server_image, workers_per_container=1, ship_code=False,
                         install_self=None)  # the server image has the package
    cluster = DockerCluster(provider=DockerProvider(start_timeout=60, pull="never"), container=spec, workers=1,
                            idle_timeout=30, worker_memory=512, tags={OWNER_LABEL: tracker.owner})
    with cluster:
        deadline = time.time() + 180
        joined = None
        while joined is None and time.time() < deadline:
            if cluster.queue is not None and cluster.queue.joined_slots():
                joined = time.time()
            time.sleep(0.01)  # a sampling interval, not synchronization
        [worker] = client.containers.list(filters={"label": [f"dockerparallel-cluster={cluster.name}",
                                                             "dockerparallel-role=worker"]})
        started = datetime.datetime.fromisoformat(
            worker.attrs["State"]["StartedAt"][:26].rstrip("Z") + "+00:00").timestamp()
        logs = worker.logs().decode(errors="replace")
        found = re.search(r"\(([0-9.]+) s in the bootstrap\)", logs)
        return {"join_s": round(joined - started, 2) if joined else None,
                "bootstrap_s": float(found.group(1)) if found else None,
                "uploaded": cluster.shipment.uploaded if cluster.shipment else {},
                "publish_s": round(cluster.shipment.seconds, 3) if cluster.shipment else None}


def archive_numbers() -> None:
    from prefect_dockerparallel.shipping import package as P
    from prefect_dockerparallel.shipping import usercode as U

    t = time.perf_counter()
    package = P.package_archive()
    built = time.perf_counter() - t
    units = U.explicit([str(REPO / "flows")])
    t = time.perf_counter()
    flows = U.code_archive(units, 100 * 2**20)
    flows_s = time.perf_counter() - t
    t = time.perf_counter()
    U.code_archive(units, 100 * 2**20)
    again_s = time.perf_counter() - t
    raw = sum(p.stat().st_size for p in U.collect(units, 10**9).values())
    print(f"package archive: {len(package.data)} bytes, built in {built * 1000:.0f} ms (once per driver process)")
    print(f"flows/ folder: {len(flows.data) if flows else 0} bytes zipped ({raw} bytes of files), built in "
          f"{flows_s * 1000:.0f} ms; unchanged again in the same process: {again_s * 1000:.1f} ms (stat walk only)")
    print(f"extra dependencies shipped: {[a.name for a in P.dependency_archives()] or 'none (Prefect brings redis and cloudpickle)'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=1)
    args = parser.parse_args()

    import docker

    from containers import ContainerTracker, image_of, manifest_path
    from docker_support import build_dev_worker_image

    archive_numbers()
    client = docker.from_env()
    images = json.loads(manifest_path().read_text())
    baked = build_dev_worker_image(client, image_of(images, "worker"))
    kinds = {"self-shipping (stock prefect image)": image_of(images, "prefect"), "baked image": baked}
    tracker = ContainerTracker(client, test_name="bench/zero_build.py")
    rows: dict[str, list[dict]] = {k: [] for k in kinds}
    try:
        for rep in range(args.reps):
            for kind, image in kinds.items():
                row = one_cluster(client, tracker, image, baked)
                rows[kind].append(row)
                print(f"rep {rep} {kind:36s} start -> joined {row['join_s']} s; bootstrap {row['bootstrap_s']} s; "
                      f"uploaded {row['uploaded']} in {row['publish_s']} s", flush=True)
    finally:
        left = tracker.cleanup()
        if any(left.values()):
            print(f"could not remove: {left}", flush=True)
    print("\nsummary (median)")
    for kind, got in rows.items():
        joins = [r["join_s"] for r in got if r["join_s"] is not None]
        boots = [r["bootstrap_s"] for r in got if r["bootstrap_s"] is not None]
        print(f"  {kind:36s} start -> joined {statistics.median(joins) if joins else 'n/a'} s, "
              f"bootstrap {statistics.median(boots) if boots else 'n/a'} s")


if __name__ == "__main__":
    main()
