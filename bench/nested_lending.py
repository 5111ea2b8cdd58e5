"""What slot lending (container/lending.py) costs a plain map: the driver's future.result() and
wait() gain one check (are we inside a worker?), the worker's ack path one method call.

Measures, in-process and without a cluster: result() of completed DockerParallelFutures with the
check and with it bypassed, and the check alone. Usage: python bench/nested_lending.py [N]
"""

from __future__ import annotations

import concurrent.futures
import sys
import time
import uuid

from prefect.states import Completed

from prefect_dockerparallel.runner import futures as F


def make(n: int) -> list[F.DockerParallelFuture]:
    out = []
    for i in range(n):
        wrapped: concurrent.futures.Future = concurrent.futures.Future()
        wrapped.set_result(Completed(data=i))
        out.append(F.DockerParallelFuture(task_run_id=uuid.uuid4(), wrapped_future=wrapped))
    return out


def timed(fn, n: int) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) / n * 1e9


def main(n: int = 20_000) -> None:
    def run(bypass: bool) -> float:
        batch = make(n)  # fresh futures: result() on a first call takes the full path
        original = F.DockerParallelFuture._lending
        if bypass:
            F.DockerParallelFuture._lending = lambda self: F._NO_LENDING
        try:
            return timed(lambda: [f.result() for f in batch], n)
        finally:
            F.DockerParallelFuture._lending = original

    with_check = min(run(False) for _ in range(5))
    without = min(run(True) for _ in range(5))
    probe = make(1)[0]
    check = min(timed(lambda: [probe._lending() for _ in range(n)], n) for _ in range(5))
    print(f"future.result(), first call: {with_check:.0f} ns with the lending check, {without:.0f} ns without "
          f"({with_check - without:+.0f} ns); the check alone: {check:.0f} ns per call")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)
