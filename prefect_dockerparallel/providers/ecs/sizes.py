"""Fargate's valid task sizes, checked before any AWS call so a bad size costs nothing.

Fargate only accepts fixed CPU/memory pairs (CPU units: 1024 = 1 vCPU, memory in MiB). A wrong
pair is otherwise only rejected by RegisterTaskDefinition/RunTask, after networking was built.
"""

from __future__ import annotations

from dataclasses import dataclass


def _steps(start: int, stop: int, step: int) -> tuple[int, ...]:
    return tuple(range(start, stop + 1, step))


# https://docs.aws.amazon.com/AmazonECS/latest/developerguide/fargate-tasks-services.html#fargate-tasks-size
VALID_SIZES: dict[int, tuple[int, ...]] = {
    256: (512, 1024, 2048),
    512: _steps(1024, 4096, 1024),
    1024: _steps(2048, 8192, 1024),
    2048: _steps(4096, 16384, 1024),
    4096: _steps(8192, 30720, 1024),
    8192: _steps(16384, 61440, 4096),
    16384: _steps(32768, 122880, 8192),
}
MAX_CPU = max(VALID_SIZES)
MAX_MEMORY = max(VALID_SIZES[MAX_CPU])


@dataclass(frozen=True, order=True)
class FargateSize:
    cpu: int
    memory: int

    def __str__(self) -> str:
        return f"cpu={self.cpu} memory={self.memory}"


def all_sizes() -> list[FargateSize]:
    return [FargateSize(c, m) for c, mems in VALID_SIZES.items() for m in mems]


def is_valid(cpu: int, memory: int) -> bool:
    return memory in VALID_SIZES.get(cpu, ())


def round_up(cpu: int, memory: int) -> FargateSize | None:
    """Smallest valid size with at least `cpu` and `memory` (cheapest first), or None if too big."""
    fits = [s for s in all_sizes() if s.cpu >= cpu and s.memory >= memory]
    return min(fits, key=lambda s: (s.cpu, s.memory)) if fits else None


def nearest(cpu: int, memory: int) -> FargateSize:
    """Closest valid size by relative distance in both dimensions (for error messages)."""

    def dist(s: FargateSize) -> float:
        return abs(s.cpu - cpu) / max(cpu, 1) + abs(s.memory - memory) / max(memory, 1)

    return min(all_sizes(), key=lambda s: (dist(s), s.cpu, s.memory))


def check_exact(cpu: int, memory: int, what: str) -> FargateSize:
    """A size that must already be valid (the server task): ValueError names the closest ones."""
    if is_valid(cpu, memory):
        return FargateSize(cpu, memory)
    up = round_up(cpu, memory)
    near = nearest(cpu, memory)
    choices = [str(near)] + ([f"{up} (rounded up)"] if up and up != near else [])
    cpus = ", ".join(str(c) for c in VALID_SIZES)
    raise ValueError(
        f"{what} cpu={cpu} memory={memory} is not a valid Fargate size; nearest valid: "
        f"{' or '.join(choices)}. Fargate CPU units are {cpus}; each allows a memory range "
        "(see docs/ecs.md)"
    )


def worker_container_size(worker_cpu: int, worker_memory: int, workers_per_container: int) -> FargateSize:
    """Size of one worker container: per-slot size times slots, rounded up to a valid size."""
    cpu, memory = worker_cpu * workers_per_container, worker_memory * workers_per_container
    size = round_up(cpu, memory)
    if size is not None:
        return size
    fit = max(
        (n for n in range(1, workers_per_container) if round_up(worker_cpu * n, worker_memory * n)),
        default=0,
    )
    hint = (
        f"use workers_per_container={fit}"
        if fit
        else f"lower worker_cpu/worker_memory to at most cpu={MAX_CPU} memory={MAX_MEMORY}"
    )
    raise ValueError(
        f"worker container size cpu={cpu} memory={memory} (worker_cpu={worker_cpu} x "
        f"worker_memory={worker_memory} x workers_per_container={workers_per_container}) exceeds "
        f"the largest Fargate size; nearest valid: {nearest(cpu, memory)}; {hint}"
    )
