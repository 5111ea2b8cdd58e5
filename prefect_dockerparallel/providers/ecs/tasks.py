"""ECS task plumbing: per-run task definitions, RunTask in batches, DescribeTasks parsing.

Secrets never enter a task definition or RunTask: the definition's `secrets` section names SSM
SecureString parameters (see `secrets.py`), which the ECS agent resolves at container start.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from ..base import ProviderError
from .aws import (
    CLUSTER_TAG,
    NETWORK_TAG,
    ROLE_TAG,
    chunks,
    ecs_tags,
    error_code,
    from_ecs_tags,
    with_backoff,
)
from .sizes import FargateSize

log = logging.getLogger("prefect_dockerparallel.ecs")

RUN_BATCH = 10  # RunTask's maximum `count`
DESCRIBE_BATCH = 100  # DescribeTasks' maximum number of ARNs
ACTIVE_STATES = ("PROVISIONING", "PENDING", "ACTIVATING", "RUNNING")


@dataclass(frozen=True)
class TaskInfo:
    """What the driver needs of one DescribeTasks entry."""

    arn: str
    last_status: str
    desired_status: str
    tags: dict[str, str] = field(default_factory=dict)
    stopped_reason: str = ""
    container_reason: str = ""
    exit_code: int | None = None
    private_ip: str | None = None
    eni_id: str | None = None
    task_definition_arn: str = ""

    @property
    def role(self) -> str:
        return self.tags.get(ROLE_TAG, "")

    @property
    def active(self) -> bool:
        return self.desired_status == "RUNNING" and self.last_status in ACTIVE_STATES

    @property
    def running(self) -> bool:
        return self.desired_status == "RUNNING" and self.last_status == "RUNNING"

    @property
    def short_id(self) -> str:
        return self.arn.rsplit("/", 1)[-1]

    @property
    def stop_kind(self) -> str:
        """normal (the worker exited 0 by itself), interrupted (Spot reclaim) or failed."""
        reason = self.stopped_reason
        if "spot" in reason.lower():
            return "interrupted"
        if self.exit_code == 0 and reason.startswith("Essential container in task exited"):
            return "normal"
        return "failed"

    def why_stopped(self) -> str:
        parts = [self.stopped_reason or "no stoppedReason"]
        if self.exit_code is not None:
            parts.append(f"exit code {self.exit_code}")
        if self.container_reason:
            parts.append(self.container_reason)
        return "; ".join(parts)


def parse_task(raw: dict[str, Any]) -> TaskInfo:
    details: dict[str, str] = {}
    for att in raw.get("attachments", []):
        if att.get("type") == "ElasticNetworkInterface":
            details = {d["name"]: d["value"] for d in att.get("details", [])}
    containers = raw.get("containers", [])
    first = containers[0] if containers else {}
    return TaskInfo(
        arn=raw["taskArn"],
        last_status=raw.get("lastStatus", ""),
        desired_status=raw.get("desiredStatus", ""),
        tags=from_ecs_tags(raw.get("tags")),
        stopped_reason=raw.get("stoppedReason", ""),
        container_reason=first.get("reason", ""),
        exit_code=first.get("exitCode"),
        private_ip=details.get("privateIPv4Address"),
        eni_id=details.get("networkInterfaceId"),
        task_definition_arn=raw.get("taskDefinitionArn", ""),
    )


def started_by(cluster: str) -> str:
    """ECS limits startedBy to 36 characters; tags disambiguate the rare truncation clash."""
    return cluster[:36]


def list_task_arns(ecs: Any, ecs_cluster: str, desired: str = "RUNNING", by: str | None = None) -> list[str]:
    kwargs: dict[str, Any] = {"cluster": ecs_cluster, "desiredStatus": desired}
    if by:
        kwargs["startedBy"] = by
    arns: list[str] = []
    try:
        for page in ecs.get_paginator("list_tasks").paginate(**kwargs):
            arns.extend(page.get("taskArns", []))
    except ClientError as exc:
        if error_code(exc) != "ClusterNotFoundException":
            raise
    return arns


def describe(ecs: Any, ecs_cluster: str, arns: list[str]) -> list[TaskInfo]:
    out: list[TaskInfo] = []
    for batch in chunks(sorted(set(arns)), DESCRIBE_BATCH):
        resp = ecs.describe_tasks(cluster=ecs_cluster, tasks=batch, include=["TAGS"])
        out.extend(parse_task(t) for t in resp.get("tasks", []))
    return out


def cluster_tasks(
    ecs: Any, ecs_cluster: str, cluster: str, extra_arns: tuple[str, ...] = ()
) -> list[TaskInfo]:
    """Active tasks of one dockerparallel cluster (plus `extra_arns`, e.g. ones we launched)."""
    arns = list_task_arns(ecs, ecs_cluster, by=started_by(cluster)) + list(extra_arns)
    if not arns:
        return []
    return [t for t in describe(ecs, ecs_cluster, arns) if t.tags.get(CLUSTER_TAG) == cluster]


@dataclass(frozen=True)
class ContainerPlan:
    """One per-run task definition: what runs, how big, with which env and secret references."""

    family: str
    role: str  # "server" | "worker"
    image: str
    command: str
    size: FargateSize
    environment: dict[str, str]
    secrets: dict[str, str]  # env name -> SSM parameter ARN
    labels: dict[str, str]
    log_group: str
    log_prefix: str
    region: str
    execution_role_arn: str
    task_role_arn: str | None = None
    port: int | None = None
    stop_timeout: int = 30
    cpu_architecture: str = "X86_64"


def register_task_definition(ecs: Any, plan: ContainerPlan) -> str:
    container: dict[str, Any] = {
        "name": plan.role,
        "image": plan.image,
        "essential": True,
        "entryPoint": ["sh", "-c"],
        "command": [plan.command],
        "environment": [{"name": k, "value": v} for k, v in sorted(plan.environment.items())],
        "secrets": [{"name": k, "valueFrom": v} for k, v in sorted(plan.secrets.items())],
        # moto's Fargate RunTask needs container-level sizes; they equal the task's here.
        "cpu": plan.size.cpu,
        "memory": plan.size.memory,
        "stopTimeout": plan.stop_timeout,
        # ECS's init process (PID 1) forwards SIGTERM to the entrypoint and reaps zombies, as
        # `sh -c` would not; SIGTERM is how a Spot worker gets to re-queue its tasks.
        "linuxParameters": {"initProcessEnabled": True},
        "logConfiguration": {
            "logDriver": "awslogs",
            "options": {
                "awslogs-group": plan.log_group,
                "awslogs-region": plan.region,
                "awslogs-stream-prefix": plan.log_prefix,
            },
        },
    }
    if plan.port:
        container["portMappings"] = [{"containerPort": plan.port, "protocol": "tcp"}]
    kwargs: dict[str, Any] = {
        "family": plan.family,
        "networkMode": "awsvpc",
        "requiresCompatibilities": ["FARGATE"],
        "cpu": str(plan.size.cpu),
        "memory": str(plan.size.memory),
        "executionRoleArn": plan.execution_role_arn,
        "containerDefinitions": [container],
        "runtimePlatform": {"cpuArchitecture": plan.cpu_architecture, "operatingSystemFamily": "LINUX"},
        "tags": ecs_tags({**plan.labels, ROLE_TAG: plan.role}),
    }
    if plan.task_role_arn:
        kwargs["taskRoleArn"] = plan.task_role_arn
    resp = with_backoff(lambda: ecs.register_task_definition(**kwargs), "RegisterTaskDefinition")
    return str(resp["taskDefinition"]["taskDefinitionArn"])


@dataclass(frozen=True)
class Launch:
    """Everything RunTask needs besides the count."""

    ecs_cluster: str
    task_definition: str
    cluster: str
    role: str
    labels: dict[str, str]
    subnets: tuple[str, ...]
    security_groups: tuple[str, ...]
    assign_public_ip: bool = True
    spot: bool = False
    platform_version: str = "LATEST"


def run_tasks(
    ecs: Any, launch: Launch, count: int, backoff: Callable[..., Any] = with_backoff
) -> tuple[list[str], list[str]]:
    """Start `count` tasks in RunTask calls of at most 10; returns (task ARNs, failure reasons).

    Each batch has its own client token, reused across throttling retries, so a retried call
    that had in fact succeeded does not start the batch twice.
    """
    kwargs: dict[str, Any] = {
        "cluster": launch.ecs_cluster,
        "taskDefinition": launch.task_definition,
        "startedBy": started_by(launch.cluster),
        "platformVersion": launch.platform_version,
        "networkConfiguration": {
            "awsvpcConfiguration": {
                "subnets": list(launch.subnets),
                "securityGroups": list(launch.security_groups),
                "assignPublicIp": "ENABLED" if launch.assign_public_ip else "DISABLED",
            }
        },
        "tags": ecs_tags({**launch.labels, ROLE_TAG: launch.role}),
        "enableECSManagedTags": True,
    }
    if launch.spot:
        kwargs["capacityProviderStrategy"] = [{"capacityProvider": "FARGATE_SPOT", "weight": 1}]
    else:
        kwargs["launchType"] = "FARGATE"
    arns: list[str] = []
    failures: list[str] = []
    remaining = count
    while remaining > 0:
        n = min(RUN_BATCH, remaining)
        token = f"{launch.cluster}-{uuid.uuid4().hex[:20]}"
        resp = backoff(
            lambda n=n, token=token: ecs.run_task(count=n, clientToken=token, **kwargs), f"RunTask x{n}"
        )
        arns.extend(t["taskArn"] for t in resp.get("tasks", []))
        failures.extend(
            f"{f.get('reason', '?')}: {f.get('detail', '')}".rstrip(": ") for f in resp.get("failures", [])
        )
        remaining -= n
    if failures:
        log.warning(
            "RunTask could not start %d %s task(s): %s",
            len(failures),
            launch.role,
            "; ".join(sorted(set(failures))),
        )
    if count and not arns:
        raise ProviderError(
            f"RunTask started none of {count} {launch.role} task(s): "
            f"{'; '.join(sorted(set(failures))) or 'no reason given'}"
        )
    return arns, failures


def stop_tasks(ecs: Any, ecs_cluster: str, arns: list[str], reason: str) -> None:
    """StopTask has no batch form: a few calls in parallel keep a large teardown short."""

    def stop(arn: str) -> None:
        try:
            with_backoff(
                lambda: ecs.stop_task(cluster=ecs_cluster, task=arn, reason=reason[:255]), "StopTask"
            )
        except Exception as exc:  # already gone is fine; anything else is logged, not raised
            log.warning("StopTask %s failed: %s", arn.rsplit("/", 1)[-1], exc)

    if len(arns) <= 1:
        for arn in arns:
            stop(arn)
        return
    with ThreadPoolExecutor(max_workers=min(8, len(arns)), thread_name_prefix="dp-stoptask") as pool:
        list(pool.map(stop, arns))


def ensure_ecs_cluster(ecs: Any, name: str, spot: bool) -> None:
    """The account-level ECS cluster, with the Fargate capacity providers (Spot for workers)."""
    found = ecs.describe_clusters(clusters=[name]).get("clusters", [])
    active = [c for c in found if c.get("status") == "ACTIVE"]
    if not active:
        ecs.create_cluster(
            clusterName=name,
            capacityProviders=["FARGATE", "FARGATE_SPOT"],
            tags=[{"key": NETWORK_TAG, "value": name}],
        )
        log.info("created ECS cluster %s", name)
    elif spot and "FARGATE_SPOT" not in active[0].get("capacityProviders", []):
        ecs.put_cluster_capacity_providers(
            cluster=name,
            capacityProviders=sorted({*active[0].get("capacityProviders", []), "FARGATE", "FARGATE_SPOT"}),
            defaultCapacityProviderStrategy=active[0].get("defaultCapacityProviderStrategy", []),
        )
