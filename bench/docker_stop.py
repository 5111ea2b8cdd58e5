"""How long `docker stop` takes for a 4-slot worker container whose 4 slots are all mid-task.

    .venv/bin/python bench/docker_stop.py                    # this checkout's supervisor
    .venv/bin/python bench/docker_stop.py --before baedc99   # container/worker.py of that revision too

Prints per variant: seconds of `docker stop -t 10`, the exit code (143: the container left on its
own after SIGTERM; 137: docker had to SIGKILL it after 10 s), how many of the 4 claimed tasks were
back in the queue right after, and whether a slot was respawned. No Prefect server needed (the
tasks are plain functions through `cluster.executor()`). Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402,F401  (puts the repository and tests/ on sys.path)

REPO = Path(__file__).resolve().parents[1]
WORKER_PY = "prefect_dockerparallel/container/worker.py"


def nap(seconds: float) -> float:  # __main__'s: pickled by value, the image has no bench/
    import time

    time.sleep(seconds)
    return seconds


def measure(image: str) -> dict:
    from prefect_dockerparallel import DockerCluster, DockerProvider, WorkerContainer
    from helpers import wait_until

    import docker

    client = docker.from_env()
    owner = f"dp-bench-{os.getpid()}"
    cluster = DockerCluster(provider=DockerProvider(), workers=4, idle_timeout=60, heal=False,
                            container=WorkerContainer(image=image, install_self="", workers_per_container=4),
                            worker_cpu=512, worker_memory=256, tags={"dp-bench-owner": owner})
    with cluster:
        wait_until(lambda: cluster.worker_numbers().running == 4, 180)
        ex = cluster.executor()  # not `with`: its shutdown would wait for the 60 s naps
        for _ in range(4):
            ex.submit(nap, 60)
        wait_until(lambda: cluster.queue.slot_usage() == (4, 4), 60)
        [container] = client.containers.list(
            filters={"label": [f"dp-bench-owner={owner}", "dockerparallel-role=worker"]})
        started = time.perf_counter()
        container.stop(timeout=10)
        seconds = time.perf_counter() - started
        pending = cluster.queue.pending()
        container.reload()
        logs = container.logs().decode(errors="replace")
    return {"image": image, "stop_s": round(seconds, 2), "exit_code": container.attrs["State"]["ExitCode"],
            "tasks_back_in_queue": pending, "respawned": "starting a replacement" in logs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", help=f"a git revision whose {WORKER_PY} to measure as well")
    args = parser.parse_args()

    import docker

    from containers import image_of
    from docker_support import build_dev_worker_image

    client = docker.from_env()
    manifest = json.loads(Path(os.environ.get("DOCKERPARALLEL_TEST_IMAGES", "/tmp/dp-docker-images.json")).read_text())
    base = image_of(manifest, "worker")
    variants = {"this checkout": build_dev_worker_image(client, base)}
    if args.before:
        old = subprocess.run(["git", "-C", str(REPO), "show", f"{args.before}:{WORKER_PY}"], check=True,
                             capture_output=True).stdout
        variants[f"worker.py of {args.before}"] = build_dev_worker_image(client, base, {WORKER_PY: old})
    for label, image in reversed(list(variants.items())):
        row = measure(image)
        print(f"{label:28s} docker stop {row['stop_s']:5.2f} s, exit code {row['exit_code']}, "
              f"{row['tasks_back_in_queue']}/4 tasks back in the queue at once, respawned a slot: {row['respawned']}",
              flush=True)


if __name__ == "__main__":
    main()
