"""Container-seconds of an adaptive cluster against a fixed-size one, for the same bursty work.

    .venv/bin/python bench/adaptive.py                       # local provider
    .venv/bin/python bench/adaptive.py --bursts 3 --tasks 100 --pause 20

The work: `--bursts` bursts of `--tasks` tasks of `--task-s` seconds each, `--pause` seconds
apart (a flow that waits on something between stages). Fixed: `--max` workers for the whole run.
Adaptive: min_workers=0, max_workers=`--max`, scale_down_after=`--scale-down-after`. Printed per
variant: wall time, worker container-seconds (fixed: wall x containers; adaptive: measured by
sampling the live worker processes every 50 ms), and the ratio. No Prefect server needed (plain
functions through `cluster.executor()`). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402,F401  (puts the repository and tests/ on sys.path)


def work(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


def run(args: argparse.Namespace, adaptive: bool) -> dict:
    from prefect_dockerparallel import DockerCluster

    bounds = ({"min_workers": 0, "max_workers": args.max, "scale_down_after": args.scale_down_after}
              if adaptive else {"workers": args.max})
    cluster = DockerCluster(idle_timeout=60, **bounds)
    sampled = {"container_s": 0.0}
    done = threading.Event()

    def sample() -> None:
        last = time.monotonic()
        while not done.wait(0.05):
            now = time.monotonic()
            sampled["container_s"] += (now - last) * cluster.driver.worker_containers(cluster.spec).running
            last = now

    started = time.monotonic()
    with cluster:
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        ex = cluster.executor()
        for burst in range(args.bursts):
            if burst:
                time.sleep(args.pause)  # the workload's own idle stage, not synchronization
            assert sum(f.result() for f in [ex.submit(work, args.task_s) for _ in range(args.tasks)]) > 0
        wall = time.monotonic() - started
        done.set()
        sampler.join()
    return {"wall_s": wall, "container_s": sampled["container_s"],
            "history": cluster.autoscaler.timeline(cluster.started_at) if cluster.autoscaler else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=60)
    parser.add_argument("--task-s", type=float, default=0.1)
    parser.add_argument("--pause", type=float, default=15.0)
    parser.add_argument("--max", type=int, default=3)
    parser.add_argument("--scale-down-after", type=float, default=3.0)
    args = parser.parse_args()
    rows = {name: run(args, name == "adaptive") for name in ("fixed", "adaptive")}
    for name, row in rows.items():
        print(f"{name:9s} wall {row['wall_s']:6.1f} s, worker container-seconds {row['container_s']:7.1f}"
              + (f", slots over time {row['history']}" if row["history"] else ""), flush=True)
    ratio = rows["adaptive"]["container_s"] / rows["fixed"]["container_s"]
    print(f"adaptive/fixed: container-seconds {ratio:.2f}x, wall {rows['adaptive']['wall_s'] / rows['fixed']['wall_s']:.2f}x")


if __name__ == "__main__":
    main()
