"""Where the cluster's secrets live on AWS, and the roles/log group that let tasks read them.

The Redis password and the signing key go to SSM Parameter Store as per-run SecureString
parameters. Task definitions name them in `secrets` (an ARN, no value), so neither
DescribeTaskDefinition, DescribeTasks nor CloudTrail's RunTask record shows a value; the ECS
agent fetches them with the task execution role at container start. Trade-off: one more IAM
permission set (ssm:PutParameter/DeleteParameters for the runner, ssm:GetParameters for the
execution role) and a per-run task definition revision, which teardown deregisters.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from botocore.exceptions import ClientError

from ...protocol import keys as K
from ...specs import ClusterSecrets
from .aws import NETWORK_TAG, aws_tags, error_code

log = logging.getLogger("prefect_dockerparallel.ecs")

PARAM_ROOT = "/dockerparallel"
SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "API_KEY", "PRIVATE_KEY", "CREDENTIAL")


def is_secret_env(name: str) -> bool:
    """Env names whose values go to SSM instead of the task definition (ours, and look-alikes
    such as PREFECT_API_KEY or AWS_SECRET_ACCESS_KEY in the container's `env`)."""
    upper = name.upper()
    return name in K.SECRET_ENV_NAMES or any(w in upper for w in SECRET_WORDS)


def param_prefix(ecs_cluster: str) -> str:
    return f"{PARAM_ROOT}/{ecs_cluster}/"


def param_name(ecs_cluster: str, cluster: str, env_name: str) -> str:
    return f"{param_prefix(ecs_cluster)}{cluster}/{env_name}"


def split_env(env: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(plain, secret) parts of a container environment."""
    plain = {k: v for k, v in env.items() if not is_secret_env(k)}
    return plain, {k: v for k, v in env.items() if is_secret_env(k)}


def put_secrets(
    ssm: Any, ecs_cluster: str, cluster: str, values: dict[str, str], labels: dict[str, str]
) -> dict[str, str]:
    """Store secret env values; returns env name -> parameter ARN (what task definitions name)."""
    arns: dict[str, str] = {}
    for env_name, value in values.items():
        name = param_name(ecs_cluster, cluster, env_name)
        try:
            ssm.put_parameter(
                Name=name,
                Value=value,
                Type="SecureString",
                Description=f"prefect-dockerparallel cluster {cluster}",
                Tags=aws_tags(labels),
            )
        except ClientError as exc:
            if error_code(exc) != "ParameterAlreadyExists":
                raise  # botocore errors carry the response only, never the request's Value
            ssm.put_parameter(Name=name, Value=value, Type="SecureString", Overwrite=True)
        arns[env_name] = str(ssm.get_parameter(Name=name)["Parameter"]["ARN"])
    return arns


def read_secrets(ssm: Any, ecs_cluster: str, cluster: str) -> ClusterSecrets | None:
    names = [param_name(ecs_cluster, cluster, e) for e in (K.ENV_REDIS_PASSWORD, K.ENV_SIGNING_KEY)]
    resp = ssm.get_parameters(Names=names, WithDecryption=True)
    got = {p["Name"]: p["Value"] for p in resp.get("Parameters", [])}
    if set(got) != set(names):
        return None
    return ClusterSecrets(redis_password=got[names[0]], signing_key=bytes.fromhex(got[names[1]]))


def find_parameters(ssm: Any, ecs_cluster: str) -> dict[str, list[str]]:
    """cluster name -> its parameter names, for every cluster of this ECS cluster."""
    out: dict[str, list[str]] = {}
    prefix = param_prefix(ecs_cluster)
    pages = ssm.get_paginator("describe_parameters").paginate(
        ParameterFilters=[{"Key": "Path", "Option": "Recursive", "Values": [prefix.rstrip("/")]}]
    )
    for page in pages:
        for p in page.get("Parameters", []):
            name = p["Name"]
            if name.startswith(prefix):
                out.setdefault(name[len(prefix) :].split("/", 1)[0], []).append(name)
    return out


def delete_parameters(ssm: Any, names: list[str]) -> list[str]:
    deleted: list[str] = []
    for i in range(0, len(names), 10):
        resp = ssm.delete_parameters(Names=names[i : i + 10])
        deleted.extend(resp.get("DeletedParameters", []))
    return deleted


def execution_policy() -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": [
                    "ecr:GetAuthorizationToken",
                    "ecr:BatchCheckLayerAvailability",
                    "ecr:GetDownloadUrlForLayer",
                    "ecr:BatchGetImage",
                    "logs:CreateLogStream",
                    "logs:PutLogEvents",
                ],
                "Resource": "*",
            },
            {
                "Effect": "Allow",
                "Action": ["ssm:GetParameters"],
                "Resource": f"arn:aws:ssm:*:*:parameter{PARAM_ROOT}/*",
            },
        ],
    }


def ensure_execution_role(iam: Any, role_name: str, network: str) -> str:
    """Account-level role ECS uses to pull images, write awslogs and read our parameters."""
    try:
        return str(iam.get_role(RoleName=role_name)["Role"]["Arn"])
    except ClientError as exc:
        if error_code(exc) != "NoSuchEntity":
            raise
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ecs-tasks.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    arn = str(
        iam.create_role(
            RoleName=role_name,
            AssumeRolePolicyDocument=json.dumps(trust),
            Description="prefect-dockerparallel: ECS task execution (images, logs, SSM secrets)",
            Tags=aws_tags({NETWORK_TAG: network}),
        )["Role"]["Arn"]
    )
    # Inline instead of AmazonECSTaskExecutionRolePolicy: the same ECR/log rights, plus our
    # parameters only, visible in one place (docs/ecs.md shows the same document).
    iam.put_role_policy(
        RoleName=role_name,
        PolicyName="dockerparallel-task-execution",
        PolicyDocument=json.dumps(execution_policy()),
    )
    log.info("created ECS task execution role %s", role_name)
    return arn


def ensure_log_group(logs: Any, group: str, retention_days: int, network: str) -> None:
    existing = logs.describe_log_groups(logGroupNamePrefix=group).get("logGroups", [])
    if any(g["logGroupName"] == group for g in existing):
        return
    try:
        logs.create_log_group(logGroupName=group, tags={NETWORK_TAG: network})
    except ClientError as exc:
        if error_code(exc) != "ResourceAlreadyExistsException":
            raise
        return  # another driver created it just now
    logs.put_retention_policy(logGroupName=group, retentionInDays=retention_days)


def tail_logs(logs: Any, group: str, stream_prefix: str, tail: int) -> str:
    """Last `tail` lines of every stream of one cluster, oldest first, prefixed by container."""
    events: list[tuple[int, str, str]] = []
    kwargs: dict[str, Any] = {"logGroupName": group, "logStreamNamePrefix": stream_prefix}
    try:
        for page in logs.get_paginator("filter_log_events").paginate(**kwargs):
            for e in page.get("events", []):
                events.append((e["timestamp"], e["logStreamName"], e["message"].rstrip("\n")))
    except ClientError as exc:
        if error_code(exc) == "ResourceNotFoundException":
            return ""
        raise
    events.sort()
    lines = []
    for _, stream, msg in events[-tail:] if tail > 0 else []:
        # stream: <prefix>/<container>/<task id>
        parts = stream.split("/")
        who = f"{parts[1]}-{parts[2][:8]}" if len(parts) >= 3 else stream
        lines.append(f"[{who}] {msg}")
    return "\n".join(lines)
