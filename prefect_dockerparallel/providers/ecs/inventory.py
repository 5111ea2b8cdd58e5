"""Finding and removing a cluster's AWS resources by tag: teardown, `clusters ls`, `cleanup`.

Everything is found again from AWS (not from driver memory), so a SIGKILLed flow runner's
leftovers can be removed by any later process with the same settings.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from ...specs import ClusterRecord
from .aws import CLUSTER_TAG, FLOW_RUN_TAG, chunks, error_code, from_aws_tags, from_ecs_tags
from .network import delete_security_group, find_run_security_groups
from .secrets import delete_parameters, find_parameters
from .tasks import TaskInfo, describe, list_task_arns, stop_tasks

log = logging.getLogger("prefect_dockerparallel.ecs")


@dataclass
class Found:
    """One cluster's resources as found by tag."""

    tasks: list[TaskInfo] = field(default_factory=list)
    security_groups: list[str] = field(default_factory=list)
    parameters: list[str] = field(default_factory=list)
    task_definitions: list[str] = field(default_factory=list)
    flow_run_id: str | None = None

    @property
    def alive(self) -> bool:
        return any(t.role == "server" and t.active for t in self.tasks)

    def describe(self) -> tuple[str, ...]:
        return (
            *(f"task {t.short_id} ({t.role}, {t.last_status})" for t in self.tasks),
            *(f"security-group {g}" for g in self.security_groups),
            *(f"ssm-parameter {p}" for p in self.parameters),
            *(f"task-definition {a.rsplit('/', 1)[-1]}" for a in self.task_definitions),
        )


def active_tasks(ecs: Any, ecs_cluster: str) -> list[TaskInfo]:
    arns = list_task_arns(ecs, ecs_cluster)
    return describe(ecs, ecs_cluster, arns) if arns else []


def tagged_task_definitions(ecs: Any, families: tuple[str, ...], cluster: str | None) -> dict[str, list[str]]:
    """ACTIVE revisions of our families that carry a cluster tag: cluster -> ARNs."""
    out: dict[str, list[str]] = {}
    for family in families:
        pages = ecs.get_paginator("list_task_definitions").paginate(familyPrefix=family, status="ACTIVE")
        for page in pages:
            for arn in page.get("taskDefinitionArns", []):
                if arn.rsplit("/", 1)[-1].rsplit(":", 1)[0] != family:
                    continue  # familyPrefix also matches longer family names
                tags = from_ecs_tags(
                    ecs.describe_task_definition(taskDefinition=arn, include=["TAGS"]).get("tags")
                )
                name = tags.get(CLUSTER_TAG)
                if name and (cluster is None or name == cluster):
                    out.setdefault(name, []).append(arn)
    return out


def inventory(
    ecs: Any, ec2: Any, ssm: Any, ecs_cluster: str, families: tuple[str, ...], cluster: str | None = None
) -> dict[str, Found]:
    found: dict[str, Found] = {}
    for t in active_tasks(ecs, ecs_cluster):
        name = t.tags.get(CLUSTER_TAG)
        if name and (cluster is None or name == cluster):
            f = found.setdefault(name, Found())
            f.tasks.append(t)
            f.flow_run_id = f.flow_run_id or t.tags.get(FLOW_RUN_TAG)
    for g in find_run_security_groups(ec2, cluster):
        tags = from_aws_tags(g.get("Tags"))
        f = found.setdefault(tags[CLUSTER_TAG], Found())
        f.security_groups.append(g["GroupId"])
        f.flow_run_id = f.flow_run_id or tags.get(FLOW_RUN_TAG)
    for name, params in find_parameters(ssm, ecs_cluster).items():
        if cluster is None or name == cluster:
            found.setdefault(name, Found()).parameters.extend(params)
    for name, arns in tagged_task_definitions(ecs, families, cluster).items():
        found.setdefault(name, Found()).task_definitions.extend(arns)
    return found


def records(found: dict[str, Found]) -> list[ClusterRecord]:
    return [
        ClusterRecord(
            name=n, provider="ecs", flow_run_id=f.flow_run_id, resources=f.describe(), alive=f.alive
        )
        for n, f in sorted(found.items())
    ]


def wait_stopped(ecs: Any, ecs_cluster: str, arns: list[str], deadline: float, poll: float) -> list[str]:
    """Poll until every task is STOPPED or the deadline passes; returns the ones still going."""
    pending = list(arns)
    while pending:
        pending = [t.arn for t in describe(ecs, ecs_cluster, pending) if t.last_status != "STOPPED"]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(poll)
    return pending


def remove(
    ecs: Any,
    ec2: Any,
    ssm: Any,
    ecs_cluster: str,
    found: Found,
    reason: str,
    timeout: float,
    poll: float,
) -> list[str]:
    """Stop tasks, then delete the security group, parameters and task definition revisions."""
    deadline = time.monotonic() + timeout
    removed: list[str] = []
    running = [t.arn for t in found.tasks if t.desired_status != "STOPPED" or t.last_status != "STOPPED"]
    if running:
        stop_tasks(ecs, ecs_cluster, running, reason)
        removed.extend(f"task {a.rsplit('/', 1)[-1]}" for a in running)
        if found.security_groups:  # network interfaces hold the group until tasks are gone
            left = wait_stopped(ecs, ecs_cluster, running, deadline, poll)
            if left:
                log.warning("%d task(s) still stopping after %.0fs", len(left), timeout)
    for group in found.security_groups:
        if delete_security_group(ec2, group, max(0.0, deadline - time.monotonic()), poll):
            removed.append(f"security-group {group}")
    if found.parameters:
        removed.extend(f"ssm-parameter {p}" for p in delete_parameters(ssm, found.parameters))
    for arn in found.task_definitions:
        try:
            ecs.deregister_task_definition(taskDefinition=arn)
        except ClientError as exc:
            log.warning("could not deregister %s: %s", arn, error_code(exc))
            continue
        removed.append(f"task-definition {arn.rsplit('/', 1)[-1]}")
    for batch in chunks(found.task_definitions, 10):
        try:  # deregistered revisions stay listed as INACTIVE unless deleted
            ecs.delete_task_definitions(taskDefinitions=batch)
        except ClientError as exc:
            log.info("DeleteTaskDefinitions not done (%s); revisions stay INACTIVE", error_code(exc))
    return removed
