"""Hello, cluster: a mapped flow on the local cluster (no cloud account needed).

    python flows/hello.py
"""

import os
import socket

from prefect import flow, task

from prefect_dockerparallel import DockerParallelTaskRunner


@task
def square(x: int) -> tuple[int, str]:
    return x * x, f"{socket.gethostname()}:{os.getpid()}"


@flow(task_runner=DockerParallelTaskRunner(workers=2))
def hello(n: int = 20) -> int:
    results = square.map(range(n)).result()
    workers = sorted({where for _, where in results})
    print(f"{n} squares computed by {len(workers)} worker processes: {workers}")
    return sum(value for value, _ in results)


if __name__ == "__main__":
    total = hello()
    assert total == sum(i * i for i in range(20)), total
    print(f"sum of squares = {total}")
