"""Protocol ceiling: enqueue + claim + ack + result of empty envelopes, no Prefect.

    .venv/bin/python bench/protocol_ceiling.py [--n 20000] [--reps 3]

The driver signs N empty task envelopes and LPUSHes them in batches (as `map` does); 1 or 2 worker
processes run the real worker-side protocol calls (`TaskQueue.claim` = BLMOVE into a processing
list, `Signer.open` with its expiry check, the acked-set check of a BLMOVE claim, `TaskQueue.ack`
= one Lua call: LPUSH result + LREM claim + SADD of the acked id + LMOVE of the next envelope,
exactly as a worker slot chains its claims); the driver drains
results with `TaskQueue.pop_results` and verifies every one. Against it: `redis-benchmark` LPUSH /
RPOP / LPOP on the same local redis-server, with 1 client (one connection's round-trip rate, what
one worker slot can at most do) and 50 clients (the server's throughput).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402,F401  (sys.path)

from helpers import RedisServer  # noqa: E402  tests/helpers.py

from prefect_dockerparallel.protocol import KIND_RESULT, KIND_TASK, Signer, TaskQueue, connect  # noqa: E402
from prefect_dockerparallel.protocol import keys as K  # noqa: E402

KEY = b"k" * 32
CLUSTER = "ceiling"


def worker(port: int, password: str, wid: str, ready, go) -> None:
    queue = TaskQueue(connect("127.0.0.1", port, password), CLUSTER)
    signer = Signer(KEY)
    queue.join(wid)
    ready.set()
    go.wait()
    env_bytes = None
    while True:
        chained = env_bytes is not None  # claimed by the previous ack: already checked against the acked set
        if env_bytes is None:
            env_bytes = queue.claim(wid, 1.0)
        if env_bytes is None:
            if queue.redis.exists(queue.keys.stopping):
                return
            continue
        env = signer.open(env_bytes)  # MAC over cluster + id + expiry + body, expiry checked
        assert env.kind == KIND_TASK
        if not chained and queue.is_acked(env.ident):  # as the worker: a BLMOVE claim costs one more trip
            env_bytes = None
            continue
        _, _, listener = K.split_ident(env.ident)
        result = signer.seal(KIND_RESULT, env.ident, b"")
        # as the worker: the ack also claims the next envelope in the same round trip
        env_bytes = queue.ack(wid, env_bytes, listener, result, claim_next=True, ident=env.ident)


def run_protocol(server: RedisServer, n: int, procs: int, batch: int = 1000) -> float:
    client = server.client()
    client.flushall()
    queue = TaskQueue(client, CLUSTER)
    signer = Signer(KEY)
    listener = "drv"
    ctx = mp.get_context("fork")
    ready = [ctx.Event() for _ in range(procs)]
    go = ctx.Event()
    workers = [
        ctx.Process(target=worker, args=(server.port, server.password, f"w{i}", ready[i], go), daemon=True)
        for i in range(procs)
    ]
    for w in workers:
        w.start()
    try:
        for r in ready:
            r.wait(30)
        go.set()
        t0 = time.perf_counter()
        pending = []
        for i in range(n):
            pending.append(signer.seal(KIND_TASK, K.make_ident("P", f"{i:032x}", listener), b""))
            if len(pending) >= batch:
                queue.enqueue(pending)
                pending = []
        queue.enqueue(pending)
        got = 0
        while got < n:
            for raw in queue.pop_results(listener, timeout=5):
                signer.open(raw)
                got += 1
        elapsed = time.perf_counter() - t0
        queue.mark_stopping()
        for w in workers:
            w.join(10)
        return n / elapsed
    finally:
        for w in workers:
            if w.is_alive():
                w.kill()
                w.join()


def redis_benchmark(server: RedisServer, clients: int, n: int) -> dict[str, float]:
    out = subprocess.run(
        ["redis-benchmark", "-h", "127.0.0.1", "-p", str(server.port), "-a", server.password,
         "-t", "lpush,lpop,rpop", "-n", str(n), "-c", str(clients), "-q", "--csv"],
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout
    rates = {}
    for line in out.splitlines():
        m = re.match(r'"(\w+)[^"]*","([\d.]+)"', line)
        if m:
            rates[m.group(1)] = float(m.group(2))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    print(f"cpus={os.cpu_count()} n={args.n} reps={args.reps}")
    with RedisServer() as server:
        results: dict[str, list[float]] = {}
        for rep in range(args.reps):
            for procs in (1, 2):
                rate = run_protocol(server, args.n, procs)
                results.setdefault(f"protocol {procs} worker proc(s) total", []).append(rate)
                results.setdefault(f"protocol {procs} worker proc(s) per proc", []).append(rate / procs)
                print(f"rep {rep}: {procs} worker process(es): {rate:,.0f} tasks/s total, {rate / procs:,.0f} per process", flush=True)
            for clients in (1, 50):
                rates = redis_benchmark(server, clients, 20000 if clients == 1 else 100000)
                for op, v in rates.items():
                    results.setdefault(f"redis-benchmark {op} c={clients}", []).append(v)
                print(f"rep {rep}: redis-benchmark -c {clients}: {rates}", flush=True)
    print("\nsummary (ops or tasks per second)")
    for name, vals in results.items():
        print(f"  {name:45s} {_common.spread(vals)}")


if __name__ == "__main__":
    main()
