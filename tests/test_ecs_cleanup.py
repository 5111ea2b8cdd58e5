"""Teardown and `prefect-dockerparallel clusters ls|cleanup --provider ecs` against moto: a
cluster whose flow runner died is found by its tags and removed; a live one is left alone."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import boto3
import pytest
from ecs_agent import FakeFargateAgent
from ecs_support import aws, make_driver, moto_url  # noqa: F401 (fixtures)
from helpers import wait_until

from prefect_dockerparallel.cli import main
from prefect_dockerparallel.providers.ecs.aws import CLUSTER_TAG
from prefect_dockerparallel.specs import ClusterSecrets, ClusterSpec

ECS_CLUSTER = "docker-parallel-cluster"


@pytest.fixture
def agent(aws: str) -> Iterator[FakeFargateAgent]:  # noqa: F811
    with FakeFargateAgent(aws, ECS_CLUSTER) as fake:
        yield fake
    assert not fake.errors, fake.errors


@pytest.fixture
def cli_env(aws: str, monkeypatch: pytest.MonkeyPatch) -> str:  # noqa: F811
    """What a user sets for the CLI: endpoint (AWS by default), region, credentials."""
    monkeypatch.setenv("DOCKERPARALLEL_ECS_ENDPOINT_URL", aws)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    return aws


def leftovers(url: str, name: str) -> dict[str, list[str]]:
    kw = dict(endpoint_url=url, region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t")
    ecs, ec2, ssm = boto3.client("ecs", **kw), boto3.client("ec2", **kw), boto3.client("ssm", **kw)
    tasks = ecs.list_tasks(cluster=ECS_CLUSTER, desiredStatus="RUNNING", startedBy=name)["taskArns"]
    groups = ec2.describe_security_groups(Filters=[{"Name": f"tag:{CLUSTER_TAG}", "Values": [name]}])
    params = [p["Name"] for p in ssm.describe_parameters()["Parameters"] if f"/{name}/" in p["Name"]]
    defs = [
        a
        for fam in ("docker-parallel-server", "docker-parallel-worker")
        for a in ecs.list_task_definitions(familyPrefix=fam, status="ACTIVE")["taskDefinitionArns"]
        if {
            t["key"]: t["value"]
            for t in ecs.describe_task_definition(taskDefinition=a, include=["TAGS"])["tags"]
        }.get(CLUSTER_TAG)
        == name
    ]
    found = {
        "tasks": tasks,
        "groups": [g["GroupId"] for g in groups["SecurityGroups"]],
        "params": params,
        "defs": defs,
    }
    return {k: v for k, v in found.items() if v}


def start(url: str, agent: FakeFargateAgent, name: str, workers: int) -> ClusterSpec:
    driver = make_driver(url, endpoint_map=agent.map_endpoint)
    spec, secrets = ClusterSpec(name=name, flow_run_id=f"flow-{name}"), ClusterSecrets.generate()
    handle = driver.start_server(spec, secrets)
    driver.set_worker_containers(spec, workers, secrets, handle)
    return spec


def test_stop_leaves_no_task_or_per_run_resource(aws: str, agent: FakeFargateAgent) -> None:  # noqa: F811
    driver = make_driver(aws, endpoint_map=agent.map_endpoint)
    spec, secrets = ClusterSpec(name="dp-clean"), ClusterSecrets.generate()
    handle = driver.start_server(spec, secrets)
    driver.set_worker_containers(spec, 3, secrets, handle)
    assert set(leftovers(aws, "dp-clean")) == {"tasks", "groups", "params", "defs"}
    driver.stop(spec)
    assert leftovers(aws, "dp-clean") == {}
    assert wait_until(lambda: not agent.running(), 20), agent.running()
    # Account-level pieces stay for the next run.
    kw = dict(endpoint_url=aws, region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t")
    assert (
        boto3.client("ecs", **kw).describe_clusters(clusters=[ECS_CLUSTER])["clusters"][0]["status"]
        == "ACTIVE"
    )


def test_cleanup_command_removes_a_dead_cluster_and_keeps_a_live_one(
    cli_env: str, agent: FakeFargateAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = start(cli_env, agent, "dp-orphan", workers=2)
    start(cli_env, agent, "dp-alive", workers=1)
    # The orphan's flow runner was SIGKILLed: its server's watchdog exits, ECS stops the task,
    # its workers are still billed until cleanup (or their own idle timeout).
    server_arn = next(
        a
        for a, env in agent.envs.items()
        if env.get("DOCKERPARALLEL_CLUSTER") == dead.name and "DOCKERPARALLEL_SLOTS" not in env
    )
    os.kill(agent.procs[server_arn].pid, signal.SIGTERM)
    assert wait_until(lambda: server_arn in agent.exited, 20)

    assert main(["clusters", "ls", "--provider", "ecs"]) == 0
    listing = capsys.readouterr().out
    assert "dp-orphan\tecs\tdead\tflow_run=flow-dp-orphan" in listing
    assert "dp-alive\tecs\talive" in listing

    assert main(["clusters", "cleanup", "--provider", "ecs"]) == 0
    out = capsys.readouterr().out
    assert "of dp-orphan" in out and "dp-alive" not in out
    assert "security-group sg-" in out and "ssm-parameter" in out and "task-definition" in out
    assert leftovers(cli_env, "dp-orphan") == {}
    assert set(leftovers(cli_env, "dp-alive")) == {"tasks", "groups", "params", "defs"}
    assert wait_until(lambda: len(agent.running()) == 2, 20)  # only dp-alive's server + worker

    assert main(["clusters", "cleanup", "--provider", "ecs", "--name", "dp-alive"]) == 0
    assert leftovers(cli_env, "dp-alive") == {}
    assert main(["clusters", "ls", "--provider", "ecs"]) == 0
    assert "no clusters found" in capsys.readouterr().out
