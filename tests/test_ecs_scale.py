"""API cost of scaling on ECS (moto): RunTask calls grow as ceil(n/10), DescribeTasks as
ceil(n/100), everything else stays constant. No fake agent: worker tasks need no process here,
and the "server" is a local redis-server the driver is pointed at."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from ecs_support import Calls, aws, make_driver, moto_url  # noqa: F401 (fixtures)
from helpers import RedisServer

from prefect_dockerparallel.specs import ClusterSecrets, ClusterSpec, ContainerSpec, Endpoint


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer(password=ClusterSecrets.generate().redis_password) as server:
        yield server


@pytest.mark.parametrize("containers", [1, 10, 25, 120])
def test_api_calls_per_worker_count(aws: str, redis_server: RedisServer, containers: int) -> None:  # noqa: F811
    driver = make_driver(aws, endpoint_map=lambda _: Endpoint("127.0.0.1", redis_server.port))
    secrets = ClusterSecrets(redis_password=redis_server.password, signing_key=b"k" * 32)
    spec = ClusterSpec(
        name="dp-scale", container=ContainerSpec(workers_per_container=4), workers=4 * containers
    )
    handle = driver.start_server(spec, secrets)
    calls = Calls().attach(driver)

    driver.set_worker_containers(spec, containers, secrets, handle)
    ops = calls.ops()
    assert ops["RunTask"] == math.ceil(containers / 10)
    assert [p["count"] for p in calls.params("RunTask")][-1] == containers - 10 * (
        math.ceil(containers / 10) - 1
    )
    # fixed part: ListTasks, DescribeTasks, RegisterTaskDefinition, PutParameter + GetParameter
    # (the signing key: the server task only needs the password)
    assert sum(ops.values()) - ops["RunTask"] == 5, ops

    calls.clear()
    counts = driver.worker_containers(spec)  # what the cluster's reconcile loop calls every 10 s
    assert (counts.running, counts.initializing) == (containers, 0)
    pages = math.ceil((containers + 1) / 100)
    assert calls.ops()["DescribeTasks"] == pages and 1 <= calls.ops()["ListTasks"] <= pages  # moto: 1 page
    assert set(calls.ops()) == {"ListTasks", "DescribeTasks"}

    calls.clear()
    driver.set_worker_containers(spec, containers, secrets, handle)  # already converged: reads only
    assert set(calls.ops()) == {"ListTasks", "DescribeTasks"}

    calls.clear()
    driver.stop(spec)
    ops = calls.ops()
    assert ops["StopTask"] == containers + 1
    assert (
        ops["DeleteSecurityGroup"] == 1
        and ops["DeleteParameters"] == 1
        and ops["DeregisterTaskDefinition"] == 2
    )
    print(f"\n{containers} worker containers: stop() made {sum(ops.values())} calls: {dict(ops)}")
