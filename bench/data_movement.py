"""Data movement: a mapped task with a large `unmapped` argument over 200 elements.

    .venv/bin/python bench/data_movement.py [--mb 50] [--elements 200] [--value frame|bytes] [--only ours,dask]

Reports, for DockerParallelTaskRunner: bytes the cluster's redis-server received during the map
(INFO stats total_net_input_bytes, delta; this includes workers' claims and acks), the keyspace
memory at the end, and per-command call counts; for ours and Dask: peak driver RSS above the
baseline (psutil, sampled every 10 ms in a thread) and the map's wall time. A machine-wide
loopback byte count (psutil net_io_counters 'lo') is printed as a rough cross-check: it also
counts other processes' loopback traffic, so treat it as an upper bound.

--value frame (default) passes an object holding the bytes (what a DataFrame or model is);
--value bytes passes a plain `bytes` value.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def redis_stats(r) -> dict:
    stats = r.info("stats")
    mem = r.info("memory")
    cmds = r.info("commandstats")
    return {
        "net_in": stats["total_net_input_bytes"],
        "net_out": stats["total_net_output_bytes"],
        "used_memory": mem["used_memory"],
        "peak_memory": mem["used_memory_peak"],
        "cmds": {k.replace("cmdstat_", ""): v["calls"] for k, v in cmds.items()},
    }


def lo_bytes() -> int:
    import psutil

    lo = psutil.net_io_counters(pernic=True).get("lo")
    return lo.bytes_sent if lo else 0


def run(kind: str, mb: int, elements: int, value_kind: str, no_cache: bool = False) -> dict:
    from prefect import flow
    from prefect.context import FlowRunContext
    from prefect.utilities.annotations import unmapped

    from _bench_tasks import Frame, frame_size, noop, size_of
    from throughput import make_runner

    data = os.urandom(mb * 1024 * 1024)
    value = Frame(data) if value_kind == "frame" else data
    fn = frame_size if value_kind == "frame" else size_of
    if no_cache:
        from prefect.cache_policies import NO_CACHE

        fn = fn.with_options(cache_policy=NO_CACHE)  # no per-task hash of the 50 MB input
    out: dict = {"runner": kind, "mb": mb, "elements": elements, "value": value_kind, "no_cache": no_cache}

    @flow(name=f"bench-data-{kind}", task_runner=make_runner(kind, 2))
    def data_flow() -> int:
        noop.submit(0).result()  # provision / warm up first: measure the map only
        r = None
        if kind == "ours":
            r = FlowRunContext.get().task_runner.docker_cluster.queue.redis
            before = redis_stats(r)
        lo0 = lo_bytes()
        with _common.RssSampler() as rss:
            t0 = _common.now()
            total = sum(fn.map(range(elements), unmapped(value)).result())
            out["seconds"] = _common.now() - t0
        out["lo_bytes"] = lo_bytes() - lo0
        out["rss_base_mb"] = rss.base / 2**20
        out["rss_peak_mb"] = rss.peak / 2**20
        out["rss_growth_mb"] = (rss.peak - rss.base) / 2**20
        if r is not None:
            after = redis_stats(r)
            out["redis_net_in_mb"] = (after["net_in"] - before["net_in"]) / 2**20
            out["redis_net_out_mb"] = (after["net_out"] - before["net_out"]) / 2**20
            out["redis_used_memory_mb"] = after["used_memory"] / 2**20
            out["redis_peak_memory_mb"] = after["peak_memory"] / 2**20
            out["redis_cmds"] = {
                k: after["cmds"].get(k, 0) - before["cmds"].get(k, 0)
                for k in after["cmds"]
                if after["cmds"].get(k, 0) - before["cmds"].get(k, 0)
            }
        return total

    expected = sum(range(elements)) + elements * len(data)
    assert data_flow() == expected
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--elements", type=int, default=200)
    parser.add_argument("--value", choices=("frame", "bytes"), default="frame")
    parser.add_argument("--only", default="ours,dask")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--api-url", default=None)
    parser.add_argument("--no-cache", action="store_true", help="the task with cache_policy=NO_CACHE")
    args = parser.parse_args()
    _common.setup_prefect(args.api_url)
    for rep in range(args.reps):
        for kind in args.only.split(","):
            res = run(kind, args.mb, args.elements, args.value, args.no_cache)
            arg_mb = args.mb * args.elements
            line = (
                f"rep {rep} {kind:7s} {args.value} {args.mb} MB x {args.elements}"
                f"{' NO_CACHE' if args.no_cache else ''}: map {res['seconds']:.1f}s, "
                f"driver RSS peak {res['rss_peak_mb']:.0f} MB (+{res['rss_growth_mb']:.0f} MB over {res['rss_base_mb']:.0f}), "
                f"loopback {res['lo_bytes'] / 2**20:.0f} MB machine-wide"
            )
            if kind == "ours":
                line += (
                    f"; Redis received {res['redis_net_in_mb']:.1f} MB (naive per-task copy would be {arg_mb} MB), "
                    f"sent {res['redis_net_out_mb']:.1f} MB, used_memory {res['redis_used_memory_mb']:.1f} MB "
                    f"(peak {res['redis_peak_memory_mb']:.1f}); commands {res['redis_cmds']}"
                )
            print(line, flush=True)


if __name__ == "__main__":
    main()
