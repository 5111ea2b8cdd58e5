"""Tasks used by the benchmarks, in an importable module so every runner can unpickle them."""

from __future__ import annotations

from prefect import task


@task
def noop(x: int) -> int:
    return x


@task
def size_of(x: int, blob: bytes) -> int:
    return x + len(blob)


class Frame:
    """Stands in for a user's large object (a DataFrame, a model): not a plain scalar."""

    def __init__(self, data: bytes):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)


@task
def frame_size(x: int, frame: Frame) -> int:
    return x + len(frame)
