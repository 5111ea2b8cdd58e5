"""No-op mapped tasks against one running Prefect server: ours against Prefect's and Dask's runners.

    .venv/bin/python bench/throughput.py              # N=1000, every runner, one repetition
    .venv/bin/python bench/throughput.py --n 5000 --reps 2 --only ours,threads

For each runner one flow run does: a single warm-up task (its time from the flow call is the
cold start: flow run creation + runner start + cluster provisioning + first result), then
`noop.map(range(N)).result()`. Reported per runner:

- map tasks/s: N / (first submit of the map -> all N results), warm runner;
- end-to-end tasks/s: (N+1) / (flow call -> all results), cold start included;
- cold start: flow call -> first result, and `with runner:` enter -> first result.

Ratios are ours / each other runner, from the same run. Not a test: nothing is asserted on time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

RUNNERS = ("threads", "processes", "dask", "ours")


PROFILE_WORKERS: str | None = None  # directory: run our workers under cProfile


def make_runner(kind: str, workers: int):
    if kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner()
    if kind == "processes":
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(max_workers=workers)
    if kind == "dask":
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs={"n_workers": workers, "processes": True, "threads_per_worker": 1},
        )
    if kind == "ours":
        from prefect_dockerparallel import DockerParallelTaskRunner

        if PROFILE_WORKERS:
            from prefect_dockerparallel.providers.local import LocalDriver

            os.environ["DP_BENCH_PROFILE_DIR"] = PROFILE_WORKERS
            os.environ["DP_BENCH_PYTHON"] = sys.executable
            wrapper = str(Path(__file__).resolve().parent / "_python_wrapper.sh")
            return DockerParallelTaskRunner(workers=workers, provider=LocalDriver(python=wrapper))
        return DockerParallelTaskRunner(workers=workers)
    raise ValueError(kind)


def run_one(kind: str, n: int, workers: int, profile: str | None = None) -> dict:
    return run_one_with(make_runner(kind, workers), kind, n, profile)


def run_one_with(runner, kind: str, n: int, profile: str | None = None) -> dict:
    """One flow run on `runner`: a warm-up task (the cold start), then a map of N no-op tasks."""
    from prefect import flow

    from _bench_tasks import noop

    marks: dict[str, float] = {}

    # Time the runner's own __enter__ (Dask starts its LocalCluster there, ours provisions lazily).
    original_enter = type(runner).__enter__

    def timed_enter(self):
        marks.setdefault("enter", _common.now())
        return original_enter(self)

    type(runner).__enter__ = timed_enter

    @flow(name=f"bench-throughput-{kind}", task_runner=runner, log_prints=False)
    def bench_flow(n: int) -> int:
        marks["body"] = _common.now()
        noop.submit(-1).result()
        cpu_before = _common.cpu_by_role()
        marks["first"] = _common.now()
        futures = noop.map(range(n))
        marks["mapped"] = _common.now()
        results = futures.result()
        marks["end"] = _common.now()
        cpu_after = _common.cpu_by_role()
        marks["cpu_ms_per_task"] = {
            role: round(1000 * (cpu_after.get(role, 0.0) - cpu_before.get(role, 0.0)) / n, 2)
            for role in cpu_after
        }
        return sum(results)

    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
    try:
        marks["call"] = _common.now()
        if prof:
            prof.enable()
        total = bench_flow(n)
        if prof:
            prof.disable()
            prof.dump_stats(profile)
        marks["returned"] = _common.now()
    finally:
        type(runner).__enter__ = original_enter
    assert total == n * (n - 1) // 2, f"{kind}: wrong sum {total}"
    map_s = marks["end"] - marks["first"]
    return {
        "runner": kind,
        "n": n,
        "map_tasks_per_s": n / map_s,
        "map_seconds": map_s,
        "submit_seconds": marks["mapped"] - marks["first"],
        "e2e_tasks_per_s": (n + 1) / (marks["end"] - marks["call"]),
        "cold_start_from_call_s": marks["first"] - marks["call"],
        "cold_start_from_enter_s": marks["first"] - marks.get("enter", marks["call"]),
        "teardown_s": marks["returned"] - marks["end"],
        "cpu_ms_per_task": marks["cpu_ms_per_task"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", default=",".join(RUNNERS), help="comma list of " + ",".join(RUNNERS))
    parser.add_argument("--api-url", default=None, help="reuse a running Prefect server")
    parser.add_argument("--json", default=None, help="append results as JSON lines to this file")
    parser.add_argument("--profile-driver", default=None, help="cProfile our runner's flow into this file")
    parser.add_argument("--profile-workers", default=None, help="directory for cProfile stats of our workers")
    args = parser.parse_args()
    global PROFILE_WORKERS
    if args.profile_workers:
        PROFILE_WORKERS = os.path.abspath(args.profile_workers)
        os.makedirs(PROFILE_WORKERS, exist_ok=True)

    api = _common.setup_prefect(args.api_url)
    kinds = [k for k in args.only.split(",") if k]
    print(f"Prefect API {api}; N={args.n}; workers={args.workers}; cpus={os.cpu_count()}", flush=True)

    rows: list[dict] = []
    for rep in range(args.reps):
        for kind in kinds:
            prof = args.profile_driver if kind == "ours" else None
            settled = _common.wait_for_quiet_server()
            print(f"  (waited {settled:.1f}s for the Prefect server to finish the previous run's events)", flush=True)
            row = run_one(kind, args.n, args.workers, profile=prof)
            row["rep"] = rep
            rows.append(row)
            print(
                f"rep {rep} {kind:10s} map {row['map_tasks_per_s']:8.1f} tasks/s "
                f"({row['map_seconds']:.2f}s; submit {row['submit_seconds']:.2f}s)  "
                f"e2e {row['e2e_tasks_per_s']:8.1f} tasks/s  cold start {row['cold_start_from_call_s']:.2f}s "
                f"from flow call, {row['cold_start_from_enter_s']:.2f}s from runner enter; "
                f"teardown {row['teardown_s']:.2f}s\n      CPU ms per task by process role: {row['cpu_ms_per_task']}",
                flush=True,
            )
            if args.json:
                with open(args.json, "a") as fh:
                    fh.write(json.dumps(row) + "\n")

    def med(kind: str, key: str) -> float | None:
        vals = [r[key] for r in rows if r["runner"] == kind]
        return statistics.median(vals) if vals else None

    print("\nsummary (median over repetitions)")
    for kind in kinds:
        vals = [r["map_tasks_per_s"] for r in rows if r["runner"] == kind]
        cold = [r["cold_start_from_call_s"] for r in rows if r["runner"] == kind]
        print(f"  {kind:10s} map tasks/s {_common.spread(vals)}; cold start s {_common.spread(cold)}")
    if "ours" in kinds:
        ours = med("ours", "map_tasks_per_s")
        ours_e2e = med("ours", "e2e_tasks_per_s")
        for kind in kinds:
            if kind == "ours":
                continue
            print(
                f"  ours/{kind}: map {ours / med(kind, 'map_tasks_per_s'):.2f}x, "
                f"end-to-end {ours_e2e / med(kind, 'e2e_tasks_per_s'):.2f}x, "
                f"cold start {med('ours', 'cold_start_from_call_s'):.2f}s vs {med(kind, 'cold_start_from_call_s'):.2f}s"
            )


if __name__ == "__main__":
    main()
