"""Scale in simulation: 1,000 workers against one Redis, and 1,000 ECS workers through moto.

    .venv/bin/python bench/scale_sim.py redis [--workers 1000] [--seconds 20]
    .venv/bin/python bench/scale_sim.py ecs [--workers 1000] [--per-container 1]

redis: each simulated worker does what a real slot does while idle: one connection parked in the
leased claim (`TaskQueue.claim`, BLMOVE, 1 s timeout, in a loop) and a heartbeat thread calling
the real `TaskQueue.heartbeat` pipeline every HEARTBEAT_INTERVAL on a second connection. Reports
connected clients, Redis memory per worker (INFO memory used_memory and mem_clients_normal),
commands/s and Redis CPU while idle-polling, heartbeat latency, and the cost of the driver's
reaper (`requeue_expired`) and `live_workers` with 1,000 registered workers.

ecs: EcsDriver against moto in server mode (tests/ecs_support.py): API calls per operation, wall
time for set_worker_containers(1000 workers), worker_containers() (the reconcile read), stop(),
and the same launch with ThrottlingException injected on RunTask.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402,F401  (sys.path)


def redis_sim(workers: int, seconds: float) -> None:
    import redis.asyncio as aredis

    from helpers import RedisServer
    from prefect_dockerparallel.protocol import TaskQueue, connect
    from prefect_dockerparallel.protocol import keys as K

    cluster = "scale"
    with RedisServer() as server:
        admin = server.client()
        queue0 = TaskQueue(admin, cluster)
        queue0.beat_driver(3600)
        mem0 = admin.info("memory")
        cpu0 = admin.info("cpu")
        print(f"empty server: used_memory {mem0['used_memory'] / 2**20:.2f} MB, clients {admin.info('clients')['connected_clients']}")

        stop = threading.Event()
        latencies: list[float] = []
        beats = [0]
        lock = threading.Lock()

        def heartbeat_worker(i: int, start: threading.Event) -> None:
            q = TaskQueue(connect("127.0.0.1", server.port, server.password), cluster)
            wid = f"sim-{i}"
            q.join(wid)
            start.wait()
            while not stop.is_set():
                t0 = time.perf_counter()
                q.heartbeat(wid)
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    beats[0] += 1
                stop.wait(K.HEARTBEAT_INTERVAL)
            q.redis.close()

        # Claim connections: asyncio clients issuing the same BLMOVE as TaskQueue.claim.
        async def claimers(n: int, ready: threading.Event) -> None:
            keys = K.Keys(cluster)
            clients = [aredis.Redis(host="127.0.0.1", port=server.port, password=server.password) for _ in range(n)]

            async def claim_loop(c, i):
                while not stop.is_set():
                    await c.blmove(keys.tasks, keys.processing(f"sim-{i}"), K.BLOCKING_POP_TIMEOUT, src="RIGHT", dest="LEFT")

            tasks = [asyncio.create_task(claim_loop(c, i)) for i, c in enumerate(clients)]
            await asyncio.sleep(2)
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.2)
            await asyncio.gather(*tasks, return_exceptions=True)
            for c in clients:
                await c.aclose()

        claim_ready = threading.Event()
        claim_thread = threading.Thread(target=lambda: asyncio.run(claimers(workers, claim_ready)), daemon=True)
        claim_thread.start()
        start = threading.Event()
        threads = [threading.Thread(target=heartbeat_worker, args=(i, start), daemon=True) for i in range(workers)]
        t_conn = time.perf_counter()
        for t in threads:
            t.start()
        claim_ready.wait(120)
        # every worker has joined once all heartbeat clients are connected
        deadline = time.monotonic() + 120
        while admin.scard(queue0.keys.workers) < workers and time.monotonic() < deadline:
            time.sleep(0.1)
        print(f"{workers} workers joined in {time.perf_counter() - t_conn:.1f}s")
        start.set()
        time.sleep(2)  # let the heartbeats spread out
        stats0, cpu0, t0 = admin.info("stats"), admin.info("cpu"), time.perf_counter()
        with lock:
            latencies.clear()
            beats[0] = 0
        time.sleep(seconds)
        stats1, cpu1, t1 = admin.info("stats"), admin.info("cpu"), time.perf_counter()
        with lock:
            lat = sorted(latencies)
            nbeats = beats[0]
        mem1 = admin.info("memory")
        clients = admin.info("clients")["connected_clients"]
        elapsed = t1 - t0
        cmds = (stats1["total_commands_processed"] - stats0["total_commands_processed"]) / elapsed
        cpu = (cpu1["used_cpu_sys"] + cpu1["used_cpu_user"] - cpu0["used_cpu_sys"] - cpu0["used_cpu_user"]) / elapsed
        net_in = (stats1["total_net_input_bytes"] - stats0["total_net_input_bytes"]) / elapsed
        net_out = (stats1["total_net_output_bytes"] - stats0["total_net_output_bytes"]) / elapsed

        # Driver-side bookkeeping with 1,000 registered workers.
        reap = []
        for _ in range(20):
            s = time.perf_counter()
            queue0.requeue_expired(3)
            reap.append(time.perf_counter() - s)
        live = []
        for _ in range(5):
            s = time.perf_counter()
            n_live = queue0.live_workers()
            live.append(time.perf_counter() - s)

        stop.set()
        for t in threads:
            t.join(10)
        claim_thread.join(15)

        used = mem1["used_memory"] - mem0["used_memory"]
        print(f"connected_clients {clients} ({clients / workers:.2f} per worker)")
        print(
            f"used_memory {mem1['used_memory'] / 2**20:.1f} MB (+{used / 2**20:.1f} MB, {used / workers / 1024:.1f} KiB per worker); "
            f"mem_clients_normal {mem1.get('mem_clients_normal', 0) / 2**20:.1f} MB; used_memory_rss {mem1['used_memory_rss'] / 2**20:.1f} MB"
        )
        print(
            f"idle load: {nbeats / elapsed:.0f} heartbeat pipelines/s (target {workers / K.HEARTBEAT_INTERVAL:.0f}), "
            f"{cmds:.0f} commands/s, Redis CPU {cpu * 100:.0f}% of one core, net in {net_in / 1024:.0f} KiB/s, out {net_out / 1024:.0f} KiB/s"
        )
        if lat:
            print(
                f"heartbeat latency p50 {statistics.median(lat) * 1000:.2f} ms, p99 {lat[int(len(lat) * 0.99)] * 1000:.2f} ms, "
                f"max {lat[-1] * 1000:.2f} ms (client threads on the same 2 cores)"
            )
        print(
            f"driver reaper requeue_expired with {workers} workers: median {statistics.median(reap) * 1000:.2f} ms; "
            f"live_workers ({n_live} live) median {statistics.median(live) * 1000:.2f} ms"
        )


def ecs_sim(workers: int, per_container: int, throttle: int) -> None:
    from ecs_support import Calls, make_driver, moto_server

    from helpers import RedisServer
    from prefect_dockerparallel.specs import ClusterSecrets, ClusterSpec, ContainerSpec, Endpoint

    containers = math.ceil(workers / per_container)
    with moto_server() as url, RedisServer(password=ClusterSecrets.generate().redis_password) as redis_server:
        for label, inject in (("no throttling", 0), (f"{throttle} ThrottlingExceptions on RunTask", throttle)):
            from ecs_support import reset_moto

            reset_moto(url)
            driver = make_driver(url, endpoint_map=lambda _: Endpoint("127.0.0.1", redis_server.port), backoff_base=0.05)
            secrets = ClusterSecrets(redis_password=redis_server.password, signing_key=b"k" * 32)
            spec = ClusterSpec(
                name="dp-scale-sim", container=ContainerSpec(workers_per_container=per_container), workers=workers
            )
            s = time.perf_counter()
            handle = driver.start_server(spec, secrets)
            t_server = time.perf_counter() - s
            calls = Calls().attach(driver)
            calls.throttle["RunTask"] = inject
            s = time.perf_counter()
            driver.set_worker_containers(spec, containers, secrets, handle)
            t_launch = time.perf_counter() - s
            launch_ops = calls.ops()
            calls.clear()
            s = time.perf_counter()
            counts = driver.worker_containers(spec)
            t_read = time.perf_counter() - s
            read_ops = calls.ops()
            calls.clear()
            s = time.perf_counter()
            driver.stop(spec)
            t_stop = time.perf_counter() - s
            stop_ops = calls.ops()
            print(f"\n[{label}] {workers} workers = {containers} tasks x {per_container} slot(s)")
            print(f"  start_server {t_server:.2f}s")
            print(f"  set_worker_containers {t_launch:.2f}s, {sum(launch_ops.values())} calls: {dict(launch_ops)}")
            print(f"  worker_containers (reconcile read) {t_read:.2f}s -> running={counts.running} initializing={counts.initializing}, {dict(read_ops)}")
            print(f"  stop {t_stop:.2f}s, {sum(stop_ops.values())} calls: {dict(stop_ops)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("redis", "ecs"))
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--per-container", type=int, default=1)
    parser.add_argument("--throttle", type=int, default=5)
    args = parser.parse_args()
    if args.what == "redis":
        redis_sim(args.workers, args.seconds)
    else:
        ecs_sim(args.workers, args.per_container, args.throttle)


if __name__ == "__main__":
    main()
