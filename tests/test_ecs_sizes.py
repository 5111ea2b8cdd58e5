"""Fargate sizes: validated before any AWS call, with the nearest valid choice in the error."""

from __future__ import annotations

import pytest

from prefect_dockerparallel.providers.ecs.sizes import (
    FargateSize,
    check_exact,
    is_valid,
    nearest,
    round_up,
    worker_container_size,
)


@pytest.mark.parametrize(
    "cpu,memory",
    [
        (256, 512),
        (256, 2048),
        (512, 4096),
        (1024, 8192),
        (2048, 16384),
        (4096, 30720),
        (8192, 61440),
        (16384, 122880),
    ],
)
def test_documented_sizes_are_valid(cpu: int, memory: int) -> None:
    assert is_valid(cpu, memory)
    assert check_exact(cpu, memory, "server") == FargateSize(cpu, memory)


@pytest.mark.parametrize(
    "cpu,memory",
    [(256, 4096), (512, 512), (1024, 1024), (8192, 18000), (16384, 16384), (300, 512), (32768, 131072)],
)
def test_invalid_sizes_are_rejected(cpu: int, memory: int) -> None:
    assert not is_valid(cpu, memory)
    with pytest.raises(ValueError, match="not a valid Fargate size; nearest valid: cpu="):
        check_exact(cpu, memory, "server")


def test_error_names_the_nearest_and_the_rounded_up_size() -> None:
    with pytest.raises(ValueError) as err:
        check_exact(256, 4096, "server")
    # 256 units allow at most 2048 MB: closest is 512/4096 (one step up in cpu)
    assert "cpu=512 memory=4096" in str(err.value)
    assert nearest(1024, 2100) == FargateSize(1024, 2048)
    assert round_up(1024, 2100) == FargateSize(1024, 3072)
    assert round_up(16384, 130000) is None


def test_worker_container_is_slots_times_size_rounded_up() -> None:
    assert worker_container_size(1024, 2048, 4) == FargateSize(4096, 8192)
    assert worker_container_size(256, 512, 3) == FargateSize(1024, 2048)  # 768/1536 -> 1 vCPU
    assert worker_container_size(512, 8192, 1) == FargateSize(1024, 8192)  # memory forces 1 vCPU
    assert worker_container_size(4096, 4096, 4) == FargateSize(16384, 32768)


def test_too_large_worker_container_suggests_fewer_slots() -> None:
    with pytest.raises(ValueError) as err:
        worker_container_size(4096, 8192, 8)
    message = str(err.value)
    assert "exceeds the largest Fargate size" in message
    assert "workers_per_container=4" in message
    with pytest.raises(ValueError, match="lower worker_cpu/worker_memory"):
        worker_container_size(32768, 1024, 1)
