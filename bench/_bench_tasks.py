"""Tasks used by the benchmarks, in an importable module so every runner can unpickle them."""

from __future__ import annotations

from prefect import task


@task
def noop(x: int) -> int:
    return x


@task
def size_of(x: int, blob: bytes) -> int:
    return x + len(blob)
