"""The fake Fargate agent in container mode, and what the ECS provider sees of real containers.

The first test pins the agent to ECS's behaviour (so the end-to-end tests mean something): the
task definition's image, entryPoint + command, environment and SSM secrets, CPU / memory
limits and init process reach Docker; StopTask is `docker stop` with the container's
stopTimeout, the task stays DEACTIVATING until the container is gone; exit codes, the OOM
reason and an unknown image come back in DescribeTasks as ECS reports them. The second runs the
provider's own worker container into its memory limit.

The functions run on workers are pickled by value (the worker image lacks this module).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from containers import docker_engine, docker_tracker, image_of, test_images  # noqa: F401
from docker_runtime import DockerRuntime, container_runtime  # noqa: F401
from docker_support import container_api, dev_worker_image, ship_by_value  # noqa: F401
from ecs_agent import OOM_REASON, FakeFargateAgent
from ecs_support import make_driver, moto_server
from helpers import wait_until

from prefect_dockerparallel import DockerCluster
from prefect_dockerparallel.runner.futures import WorkerLost
from prefect_dockerparallel.specs import ContainerSpec

ship_by_value(__name__)

ECS_CLUSTER = "docker-parallel-cluster"
MEMORY_MB = 1024  # the smallest Fargate memory for 0.5 vCPU (0.25 vCPU makes the worker's start 4x slower)


@pytest.fixture
def moto_agent(container_runtime: DockerRuntime) -> Iterator[tuple[str, FakeFargateAgent]]:  # noqa: F811
    with moto_server() as url, FakeFargateAgent(url, ECS_CLUSTER, mode="containers", runtime=container_runtime) as agent:
        yield url, agent
        assert not [e for e in agent.errors if "fake agent could not" not in e], agent.errors


def aws(url: str, service: str) -> Any:
    return boto3.client(service, endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def run(url: str, family: str, image: str, script: str, **container: Any) -> str:
    ecs, ec2 = aws(url, "ecs"), aws(url, "ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/20")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName=family, Description="test", VpcId=vpc)["GroupId"]
    ecs.create_cluster(clusterName=ECS_CLUSTER)
    ecs.register_task_definition(
        family=family, networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256", memory="512",
        containerDefinitions=[{"name": "main", "image": image, "essential": True, "cpu": 256, "memory": 512,
                               "entryPoint": ["sh", "-c"], "command": [script], **container}],
    )
    (task,) = ecs.run_task(cluster=ECS_CLUSTER, taskDefinition=family, launchType="FARGATE", networkConfiguration={
        "awsvpcConfiguration": {"subnets": [subnet], "securityGroups": [group]}})["tasks"]
    return task["taskArn"]


def described(url: str, arn: str) -> dict[str, Any]:
    (task,) = aws(url, "ecs").describe_tasks(cluster=ECS_CLUSTER, tasks=[arn])["tasks"]
    return task


def test_the_agent_runs_task_definitions_as_ecs_does(
    moto_agent: tuple[str, FakeFargateAgent], test_images: dict  # noqa: F811
) -> None:
    url, agent = moto_agent
    python = image_of(test_images, "python")
    aws(url, "ssm").put_parameter(Name="/test/token", Value="s3cr3t", Type="SecureString")
    ignores_sigterm = ("echo \"$GREETING $TOKEN\" && exec python -c 'import signal, time; "
                       "signal.signal(signal.SIGTERM, lambda *_: print(\"term\", flush=True)); "
                       "print(\"ready\", flush=True); time.sleep(600)'")
    arn = run(url, "stubborn", python, ignores_sigterm, stopTimeout=2,
              environment=[{"name": "GREETING", "value": "hello"}],
              secrets=[{"name": "TOKEN", "valueFrom": "arn:aws:ssm:us-east-1:123456789012:parameter/test/token"}],
              linuxParameters={"initProcessEnabled": True})
    workload = wait_until(lambda: agent.workloads.get(arn), 60)
    assert wait_until(lambda: "ready" in workload.logs(), 60), workload.logs()
    assert "hello s3cr3t" in workload.logs()
    host = workload.attrs["HostConfig"]
    assert (host["NanoCpus"], host["Memory"], host["Init"]) == (int(0.25e9), 512 * 2**20, True)

    aws(url, "ecs").stop_task(cluster=ECS_CLUSTER, task=arn, reason="scale in")
    assert wait_until(lambda: "term" in workload.logs(), 20)
    assert described(url, arn)["lastStatus"] == "DEACTIVATING"  # SIGTERM ignored: until stopTimeout
    assert wait_until(lambda: described(url, arn)["lastStatus"] == "STOPPED", 30)
    task = described(url, arn)
    assert (task["stoppedReason"], task["stopCode"], task["containers"][0]["exitCode"]) == ("scale in", "UserInitiated", 137)
    assert agent.stop_seconds[arn] >= 2  # SIGKILL came at the stopTimeout, not before

    hog = run(url, "hog", python, "exec python -c 'b = bytearray(700 * 2**20); b[::4096] = bytes(len(b[::4096]))'")
    assert wait_until(lambda: described(url, hog)["lastStatus"] == "STOPPED", 60)
    task = described(url, hog)
    assert task["stoppedReason"] == "Essential container in task exited"
    assert task["stopCode"] == "EssentialContainerExited"
    assert (task["containers"][0]["exitCode"], task["containers"][0]["reason"]) == (137, OOM_REASON)

    missing = run(url, "missing", "dp-test/no-such-image:0", "true")
    assert wait_until(lambda: described(url, missing)["lastStatus"] == "STOPPED", 30)
    assert described(url, missing)["stoppedReason"].startswith("CannotPullContainerError")
    assert described(url, missing)["stopCode"] == "TaskFailedToStart"
    assert wait_until(lambda: not agent.running(), 30)


def hog(megabytes: int) -> int:
    block = bytearray(megabytes * 2**20)
    for i in range(0, len(block), 4096):  # touch every page: resident, not just reserved
        block[i] = 1
    return len(block)


def test_a_worker_task_killed_for_memory_is_reported_with_ecs_reason(
    moto_agent: tuple[str, FakeFargateAgent], dev_worker_image: str, container_api: object,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A task that outgrows its Fargate task's memory: the container is OOM-killed; the task fails
    with a message that says so (ECS's stop reason), and the driver lists the worker failure."""
    url, agent = moto_agent
    driver = make_driver(url, endpoint_map=agent.map_endpoint, poll_interval=0.1, start_timeout=90, stop_timeout=30,
                         tls=True)
    container = ContainerSpec(image=dev_worker_image, workers_per_container=1, install_self=None)
    cluster = DockerCluster(provider=driver, container=container, workers=1, worker_cpu=512, worker_memory=MEMORY_MB,
                            idle_timeout=20, max_attempts=1, heal=False)
    with caplog.at_level(logging.WARNING, logger="prefect_dockerparallel"), cluster:
        future = cluster.executor().submit(hog, 2 * MEMORY_MB)
        # The task's Crashed message names the worker and says why its container ended.
        with pytest.raises(WorkerLost, match=r"lost with worker ip-10-\S+ after 1 attempt: worker task \S+ stopped: .*OutOfMemoryError"):
            future.result(timeout=120)
        driver.worker_containers(cluster.spec)  # the driver's poll, as the cluster's reconcile does
        failures = driver.worker_failures(cluster.spec)
        assert failures and OOM_REASON in failures[0] and "exit code 137" in failures[0], failures
    assert OOM_REASON in caplog.text
    assert wait_until(lambda: not agent.running(), 30), agent.running()


def whence() -> str:
    import os

    import dp_ship_helper  # a module of the user's, shipped with code_paths

    import prefect_dockerparallel

    return f"{prefect_dockerparallel.__file__} {os.environ.get('DOCKERPARALLEL_SHIPPED')} {dp_ship_helper.MARK}"


def _helper(tmp_path) -> str:  # noqa: ANN001
    path = tmp_path / "dp_ship_helper.py"
    path.write_text("MARK = 'helper-from-redis'\n")
    return str(path)


def test_a_stock_prefect_worker_task_gets_the_package_and_code_from_redis(
    moto_agent: tuple[str, FakeFargateAgent], dev_worker_image: str, test_images: dict, container_api: object, tmp_path,  # noqa: F811
) -> None:
    """Zero-build workers on ECS: the worker task's image has Prefect but not this package; its
    command (the inline bootstrap) fetches the package from the cluster's Redis over verified TLS
    (the cluster CA and the server's certificate name, as the ECS provider sets them)."""
    url, agent = moto_agent
    driver = make_driver(url, endpoint_map=agent.map_endpoint, poll_interval=0.1, start_timeout=90, stop_timeout=30,
                         tls=True)
    container = ContainerSpec(image=image_of(test_images, "prefect"), server_image=dev_worker_image,
                              workers_per_container=1, install_self=None,
                              code_paths=(_helper(tmp_path),))
    with DockerCluster(provider=driver, container=container, workers=1, worker_cpu=512, worker_memory=MEMORY_MB,
                       idle_timeout=20) as cluster:
        assert cluster.server.tls
        got = cluster.executor().submit(whence).result(timeout=180)
        assert got.startswith("/tmp/dp-ship-") and "prefect_dockerparallel=" in got and "user-code=" in got, got
        assert got.endswith("helper-from-redis"), got
