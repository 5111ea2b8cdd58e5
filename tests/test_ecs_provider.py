"""EcsDriver against moto in server mode (real HTTP, boto3), with a fake Fargate agent that runs
each RUNNING task as a local process (redis-server for the server task, an idle process for
workers). Everything here is verified against moto only, not live AWS."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import boto3
import pytest
from ecs_agent import FakeFargateAgent
from ecs_support import RUNNER_CIDR, Calls, aws, make_driver, moto_url  # noqa: F401 (fixtures)
from helpers import wait_until

from prefect_dockerparallel.providers.base import ProviderError
from prefect_dockerparallel.providers.ecs.driver import EcsDriver
from prefect_dockerparallel.providers.ecs.aws import CLUSTER_TAG, FLOW_RUN_TAG, NETWORK_TAG
from prefect_dockerparallel.specs import ClusterSecrets, ClusterSpec, ContainerSpec

ECS_CLUSTER = "docker-parallel-cluster"


def boto(url: str, service: str):  # noqa: ANN201 - a boto3 client
    return boto3.client(
        service, endpoint_url=url, region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t"
    )


@pytest.fixture
def agent(aws: str) -> Iterator[FakeFargateAgent]:  # noqa: F811
    with FakeFargateAgent(aws, ECS_CLUSTER) as fake:
        yield fake
    assert not fake.errors, fake.errors


def spec_for(name: str, **kw: object) -> ClusterSpec:
    return ClusterSpec(name=name, flow_run_id=f"run-{name}", **kw)  # type: ignore[arg-type]


def started(url: str, agent: FakeFargateAgent, name: str, **driver_kw: object):  # noqa: ANN201
    driver = make_driver(url, endpoint_map=agent.map_endpoint, **driver_kw)
    calls = Calls().attach(driver)
    spec, secrets = spec_for(name), ClusterSecrets.generate()
    handle = driver.start_server(spec, secrets)
    return driver, calls, spec, secrets, handle


def test_invalid_sizes_fail_before_any_api_call(aws: str) -> None:  # noqa: F811
    driver = make_driver(aws)
    calls = Calls().attach(driver)
    with pytest.raises(
        ValueError, match=r"nearest valid: cpu=256 memory=2048 or cpu=512 memory=4096 \(rounded up\)"
    ):
        driver.start_server(spec_for("dp-bad", server_cpu=256, server_memory=4096), ClusterSecrets.generate())
    too_big = spec_for(
        "dp-big", worker_cpu=8192, worker_memory=16384, container=ContainerSpec(workers_per_container=4)
    )
    with pytest.raises(ValueError, match="workers_per_container=2"):
        driver.validate(too_big)
    assert calls.log == []


def test_network_is_created_once_tagged_and_reused(aws: str, agent: FakeFargateAgent) -> None:  # noqa: F811
    driver, calls, spec, secrets, handle = started(aws, agent, "dp-net-1")
    created = calls.ops()
    for op in (
        "CreateCluster",
        "CreateVpc",
        "CreateSubnet",
        "CreateInternetGateway",
        "CreateRouteTable",
        "CreateRole",
    ):
        assert created[op] == 1, op
    ec2 = boto(aws, "ec2")
    vpc = ec2.describe_vpcs(Filters=[{"Name": f"tag:{NETWORK_TAG}", "Values": [ECS_CLUSTER]}])["Vpcs"]
    assert len(vpc) == 1
    vpc_id = vpc[0]["VpcId"]
    assert ec2.describe_vpc_attribute(VpcId=vpc_id, Attribute="enableDnsHostnames")["EnableDnsHostnames"][
        "Value"
    ]
    routes = ec2.describe_route_tables(Filters=[{"Name": f"tag:{NETWORK_TAG}", "Values": [ECS_CLUSTER]}])
    assert any(r.get("DestinationCidrBlock") == "0.0.0.0/0" for r in routes["RouteTables"][0]["Routes"])

    # A second run from a fresh driver (new flow run, new process) creates only per-run pieces.
    second = make_driver(aws, endpoint_map=agent.map_endpoint)
    calls2 = Calls().attach(second)
    second.start_server(spec_for("dp-net-2"), ClusterSecrets.generate())
    assert sorted(set(calls2.creates())) == [
        "AuthorizeSecurityGroupIngress",
        "CreateSecurityGroup",
        "PutParameter",
        "RegisterTaskDefinition",
    ]
    assert (
        len(ec2.describe_vpcs(Filters=[{"Name": f"tag:{NETWORK_TAG}", "Values": [ECS_CLUSTER]}])["Vpcs"]) == 1
    )
    # The same driver starting another cluster does not even look the network up again.
    calls.clear()
    driver.start_server(spec_for("dp-net-3"), ClusterSecrets.generate())
    assert not {"DescribeVpcs", "DescribeSubnets", "DescribeClusters", "GetRole"} & set(calls.ops())
    for name in ("dp-net-1", "dp-net-2", "dp-net-3"):
        driver.stop(spec_for(name))


def test_security_group_opens_redis_to_runner_and_cluster_only(aws: str, agent: FakeFargateAgent) -> None:  # noqa: F811
    driver, _, spec, _, _ = started(aws, agent, "dp-sg")
    (group,) = boto(aws, "ec2").describe_security_groups(
        Filters=[{"Name": f"tag:{CLUSTER_TAG}", "Values": ["dp-sg"]}]
    )["SecurityGroups"]
    (perm,) = group["IpPermissions"]
    assert (perm["FromPort"], perm["ToPort"]) == (6379, 6379)
    assert [r["CidrIp"] for r in perm["IpRanges"]] == [RUNNER_CIDR]
    assert [p["GroupId"] for p in perm["UserIdGroupPairs"]] == [group["GroupId"]]
    assert "0.0.0.0/0" not in json.dumps(group["IpPermissions"])
    driver.stop(spec)


def test_tags_on_every_per_run_resource(aws: str, agent: FakeFargateAgent) -> None:  # noqa: F811
    driver, _, spec, secrets, handle = started(aws, agent, "dp-tags")
    driver.set_worker_containers(spec, 3, secrets, handle)
    ecs, ec2, ssm = boto(aws, "ecs"), boto(aws, "ec2"), boto(aws, "ssm")
    arns = ecs.list_tasks(cluster=ECS_CLUSTER, desiredStatus="RUNNING")["taskArns"]
    tasks = ecs.describe_tasks(cluster=ECS_CLUSTER, tasks=arns, include=["TAGS"])["tasks"]
    assert len(tasks) == 4
    want = {CLUSTER_TAG: "dp-tags", FLOW_RUN_TAG: "run-dp-tags"}
    for task in tasks:
        assert want.items() <= {t["key"]: t["value"] for t in task["tags"]}.items()
        td = ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"], include=["TAGS"])
        assert want.items() <= {t["key"]: t["value"] for t in td["tags"]}.items()
    (group,) = ec2.describe_security_groups(Filters=[{"Name": f"tag:{CLUSTER_TAG}", "Values": ["dp-tags"]}])[
        "SecurityGroups"
    ]
    assert want.items() <= {t["Key"]: t["Value"] for t in group["Tags"]}.items()
    params = ssm.describe_parameters()["Parameters"]
    assert len(params) == 2
    for p in params:
        tags = ssm.list_tags_for_resource(ResourceType="Parameter", ResourceId=p["Name"])["TagList"]
        assert want.items() <= {t["Key"]: t["Value"] for t in tags}.items()
    driver.stop(spec)


def test_secrets_stay_out_of_task_definitions_tasks_and_logs(
    aws: str,  # noqa: F811
    agent: FakeFargateAgent,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="prefect_dockerparallel")
    driver = make_driver(aws, endpoint_map=agent.map_endpoint)
    container = ContainerSpec(env=(("PREFECT_API_KEY", "pnu_not_for_task_definitions"), ("MY_FLAG", "1")))
    spec, secrets = spec_for("dp-secret", container=container), ClusterSecrets.generate()
    handle = driver.start_server(spec, secrets)
    driver.set_worker_containers(spec, 1, secrets, handle)
    assert wait_until(lambda: len(agent.running()) == 2, 20)
    ecs = boto(aws, "ecs")
    arns = ecs.list_tasks(cluster=ECS_CLUSTER, desiredStatus="RUNNING")["taskArns"]
    described = json.dumps(ecs.describe_tasks(cluster=ECS_CLUSTER, tasks=arns)["tasks"], default=str)
    definitions = json.dumps(
        [
            ecs.describe_task_definition(taskDefinition=a)["taskDefinition"]
            for a in driver._run("dp-secret").task_definitions
        ]
    )
    hidden = (secrets.redis_password, secrets.signing_key.hex(), "pnu_not_for_task_definitions")
    for text in (described, definitions, caplog.text):
        for value in hidden:
            assert value not in text
    assert '"MY_FLAG"' in definitions  # plain env stays inline
    # ...yet the containers got them: the agent resolved the SSM references like ECS would.
    worker_env = next(env for env in agent.envs.values() if "DOCKERPARALLEL_SLOTS" in env)
    assert worker_env["DOCKERPARALLEL_REDIS_PASSWORD"] == secrets.redis_password
    assert worker_env["DOCKERPARALLEL_CLUSTER_SECRET"] == secrets.signing_key.hex()
    assert worker_env["PREFECT_API_KEY"] == "pnu_not_for_task_definitions"
    assert driver.read_secrets(spec) == secrets
    assert "testing" not in repr(driver) and "testing" not in repr(driver.cfg)
    driver.stop(spec)


def test_run_task_in_batches_of_ten_with_client_tokens(aws: str, agent: FakeFargateAgent) -> None:  # noqa: F811
    driver, calls, spec, secrets, handle = started(aws, agent, "dp-batch")
    calls.clear()
    driver.set_worker_containers(spec, 25, secrets, handle)
    runs = calls.params("RunTask")
    assert [p["count"] for p in runs] == [10, 10, 5]
    assert len({p["clientToken"] for p in runs}) == 3
    assert all(p["launchType"] == "FARGATE" and p["startedBy"] == "dp-batch" for p in runs)
    # 25 containers cost: 1 ListTasks + 1 DescribeTasks + 1 worker definition (+ 2 SSM calls) + 3 RunTask
    assert sum(calls.ops().values()) <= 8, calls.ops()
    counts = driver.worker_containers(spec)
    assert (counts.running, counts.initializing) == (25, 0)
    assert wait_until(lambda: len(agent.running()) == 26, 20)
    driver.stop(spec)


def test_throttled_run_task_is_retried_with_the_same_token(aws: str, agent: FakeFargateAgent) -> None:  # noqa: F811
    driver, calls, spec, secrets, handle = started(aws, agent, "dp-throttle")
    calls.clear()
    calls.throttle["RunTask"] = 3
    driver.set_worker_containers(spec, 12, secrets, handle)
    runs = calls.params("RunTask")
    assert [p["count"] for p in runs] == [10, 10, 10, 10, 2]  # 3 throttled, then both batches
    assert len({p["clientToken"] for p in runs[:4]}) == 1  # retries reuse the batch's token
    assert driver.worker_containers(spec).running == 12
    driver.stop(spec)


def test_throttled_stop_task_is_retried_and_teardown_leaves_nothing_running(
    aws: str, agent: FakeFargateAgent  # noqa: F811
) -> None:
    driver, calls, spec, secrets, handle = started(aws, agent, "dp-stopthrottle")
    driver.set_worker_containers(spec, 12, secrets, handle)
    assert wait_until(lambda: len(agent.running()) == 13, 20)
    calls.clear()
    calls.throttle["StopTask"] = 5
    driver.stop(spec)
    stops = calls.params("StopTask")
    assert len(stops) == 13 + 5, calls.ops()  # every task once, plus the 5 throttled retries
    ecs = boto(aws, "ecs")
    running = ecs.list_tasks(cluster=ECS_CLUSTER, startedBy="dp-stopthrottle", desiredStatus="RUNNING")["taskArns"]
    assert running == []


def test_scale_up_and_down_while_running(aws: str, agent: FakeFargateAgent) -> None:  # noqa: F811
    driver, _, spec, secrets, handle = started(aws, agent, "dp-scale")
    driver.set_worker_containers(spec, 5, secrets, handle)
    assert driver.worker_containers(spec).running == 5
    driver.set_worker_containers(spec, 2, secrets, handle)
    assert driver.worker_containers(spec).running == 2
    assert wait_until(lambda: len(agent.running()) == 3, 20)  # server + 2 workers
    ecs = boto(aws, "ecs")
    stopped = ecs.list_tasks(cluster=ECS_CLUSTER, desiredStatus="STOPPED")["taskArns"]
    reasons = {t["stoppedReason"] for t in ecs.describe_tasks(cluster=ECS_CLUSTER, tasks=stopped)["tasks"]}
    assert reasons == {"dockerparallel: scale down to 2"}
    driver.set_worker_containers(spec, 4, secrets, handle)
    assert driver.worker_containers(spec).running == 4
    assert driver.worker_failures(spec) == []  # scale-down stops are not failures
    driver.stop(spec)


def test_worker_that_stops_on_its_own_is_reported(
    aws: str,  # noqa: F811
    agent: FakeFargateAgent,
    caplog: pytest.LogCaptureFixture,
) -> None:
    driver, _, spec, secrets, handle = started(aws, agent, "dp-crash", max_worker_failures=2)
    driver.set_worker_containers(spec, 3, secrets, handle)
    assert wait_until(lambda: len(agent.running()) == 4, 20)
    ecs = boto(aws, "ecs")
    workers = [
        a
        for a in driver._run("dp-crash").launched
        if a in agent.envs and "DOCKERPARALLEL_SLOTS" in agent.envs[a]
    ]
    for arn in workers[:2]:  # what ECS does when the image cannot be pulled or the container dies
        ecs.stop_task(cluster=ECS_CLUSTER, task=arn, reason="CannotPullContainerError: pull access denied")
    with caplog.at_level(logging.WARNING, logger="prefect_dockerparallel"):
        counts = driver.worker_containers(spec)
    assert counts.running == 1
    assert "CannotPullContainerError" in caplog.text
    assert len(driver.worker_failures(spec)) == 2
    # A lost worker's id starts with its hostname, the task's private DNS name: the reason is found.
    (stopped,) = ecs.describe_tasks(cluster=ECS_CLUSTER, tasks=workers[:1])["tasks"]
    ip = next(d["value"] for d in stopped["attachments"][0]["details"] if d["name"] == "privateIPv4Address")
    why = driver.lost_worker_reason(spec, f"ip-{ip.replace('.', '-')}-7-0a1b2c")
    assert why and why.startswith(f"worker task {workers[0].rsplit('/', 1)[-1]} stopped: CannotPullContainerError")
    assert driver.lost_worker_reason(spec, f"ip-{ip.replace('.', '-')}9-7-0a1b2c") is None  # another IP
    assert driver.lost_worker_reason(spec, "laptop-7-0a1b2c") is None
    with pytest.raises(ProviderError, match="CannotPullContainerError"):
        driver.set_worker_containers(spec, 3, secrets, handle)  # stops throwing money at a broken image
    driver.stop(spec)


def test_server_that_stops_during_start_is_reported_and_cleaned_up(aws: str) -> None:  # noqa: F811
    ecs = boto(aws, "ecs")

    def fail_server(_: object) -> object:  # the "agent" here: the task dies before Redis answers
        for arn in ecs.list_tasks(cluster=ECS_CLUSTER, desiredStatus="RUNNING")["taskArns"]:
            ecs.stop_task(cluster=ECS_CLUSTER, task=arn, reason="ResourceInitializationError: no route")
        from ecs_agent import CLOSED

        return CLOSED

    driver = make_driver(aws, endpoint_map=fail_server)
    spec = spec_for("dp-nostart")
    with pytest.raises(ProviderError, match="stopped during start: ResourceInitializationError: no route"):
        driver.start_server(spec, ClusterSecrets.generate())
    assert [r for r in driver.list_clusters() if r.name == "dp-nostart"] == []


def test_start_server_is_idempotent_and_reconnectable(aws: str, agent: FakeFargateAgent) -> None:  # noqa: F811
    driver, _, spec, secrets, handle = started(aws, agent, "dp-again")
    assert driver.start_server(spec, secrets) == handle
    driver.set_worker_containers(spec, 2, secrets, handle)
    other = make_driver(aws, endpoint_map=agent.map_endpoint)  # e.g. `DockerCluster.reconnect()`
    assert other.server_handle(spec) == handle
    assert other.read_secrets(spec) == secrets
    assert other.worker_containers(spec).running == 2
    other.stop(spec)
    assert other.server_handle(spec) is None


def test_spot_workers_use_fargate_spot_and_server_stays_on_demand(aws: str, agent: FakeFargateAgent) -> None:  # noqa: F811
    driver, calls, spec, secrets, handle = started(aws, agent, "dp-spot", spot_workers=True)
    driver.set_worker_containers(spec, 2, secrets, handle)
    server_run, worker_run = calls.params("RunTask")
    assert server_run["launchType"] == "FARGATE" and "capacityProviderStrategy" not in server_run
    assert worker_run["capacityProviderStrategy"] == [{"capacityProvider": "FARGATE_SPOT", "weight": 1}]
    assert "launchType" not in worker_run
    driver.stop(spec)


def test_given_vpc_and_subnet_are_used_as_is(aws: str, agent: FakeFargateAgent) -> None:  # noqa: F811
    ec2 = boto(aws, "ec2")
    vpc_id = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc_id, EnableDnsHostnames={"Value": True})
    subnet_id = ec2.create_subnet(VpcId=vpc_id, CidrBlock="10.9.1.0/24")["Subnet"]["SubnetId"]
    driver, calls, spec, _, _ = started(aws, agent, "dp-byo", vpc_id=vpc_id, subnet_id=subnet_id)
    assert not {"CreateVpc", "CreateSubnet", "CreateInternetGateway", "CreateRouteTable"} & set(calls.ops())
    (run,) = calls.params("RunTask")
    assert run["networkConfiguration"]["awsvpcConfiguration"]["subnets"] == [subnet_id]
    driver.stop(spec)


def test_logs_come_from_cloudwatch(aws: str, agent: FakeFargateAgent) -> None:  # noqa: F811
    driver, _, spec, _, _ = started(aws, agent, "dp-logs")
    driver.stop(spec)
    # The agent ships a stopped container's output to CloudWatch, as the awslogs driver does.
    text = wait_until(lambda: driver.logs(spec), 20)
    assert "[server-" in text and "Ready to accept connections" in text


def test_pickled_driver_has_no_credentials(aws: str) -> None:  # noqa: F811
    import pickle

    driver = make_driver(aws, aws_secret_access_key="very-secret-key")
    driver.client("ecs")
    clone = pickle.loads(pickle.dumps(driver))
    assert isinstance(clone, EcsDriver)
    assert clone.cfg.aws_secret_access_key is None and clone.cfg.cluster_name == driver.cfg.cluster_name
    assert b"very-secret-key" not in pickle.dumps(driver)
