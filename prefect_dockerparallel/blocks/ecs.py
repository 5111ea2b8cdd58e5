"""The ECSFargateProvider block: where an ECS cluster runs, editable in the Prefect UI.

The block only validates and maps its fields onto `EcsDriver`'s plain settings; boto3 is
imported when `build_provider()` is called, never when the collection is imported.
"""

from __future__ import annotations

from typing import Literal, Optional

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, field_validator

from ..providers.base import Provider


def _secret(value: Optional[SecretStr]) -> Optional[str]:
    return value.get_secret_value() if value is not None else None


class ECSFargateProvider(Block):
    """Runs the Redis server and workers as AWS ECS Fargate tasks, one cluster per flow run.

    Nothing that is not given is required: the ECS cluster, VPC, subnet, internet gateway,
    route table and task execution role are found by tag or created once and reused; each run
    gets its own security group, SSM parameters and task definition revisions, all removed
    when the run ends.
    """

    _block_type_name = "DockerParallel ECS Fargate Provider"
    _block_type_slug = "dockerparallel-ecs-fargate-provider"
    _description = "Per-flow-run clusters on AWS ECS Fargate (Redis server task + worker tasks)."
    _documentation_url = (
        "https://github.com/prefect-dockerparallel/prefect-dockerparallel/blob/main/docs/ecs.md"
    )

    kind: Literal["ecs"] = Field(default="ecs", description="Provider discriminator; always 'ecs'.")
    region_name: str = Field(default="us-east-1", description="AWS region of every resource.")
    cluster_name: str = Field(
        default="docker-parallel-cluster",
        description="ECS cluster (created if missing and reused by every run); also tags the shared network.",
    )
    server_task_family: str = Field(
        default="docker-parallel-server", description="Task definition family of the Redis server task."
    )
    worker_task_family: str = Field(
        default="docker-parallel-worker", description="Task definition family of the worker tasks."
    )
    security_group_name: str = Field(
        default="docker-parallel-security-group",
        description="Name prefix of the per-run security group (Redis from the runner and the cluster only).",
    )
    vpc_id: Optional[str] = Field(default=None, description="Existing VPC; default: found by tag or created.")
    subnet_id: Optional[str] = Field(
        default=None,
        description="Existing subnet (its routing is left alone); default: found by tag or created.",
    )
    security_group_id: Optional[str] = Field(
        default=None,
        description="Existing security group attached to every task in addition to the per-run one.",
    )
    internet_gateway_id: Optional[str] = Field(
        default=None, description="Existing internet gateway; default: the VPC's, or created."
    )
    route_table_id: Optional[str] = Field(
        default=None,
        description="Existing route table to add the default route to; default: found or created.",
    )
    aws_access_key_id: Optional[SecretStr] = Field(
        default=None, description="Access key id; default: profile, then the boto3 chain (env, SSO, role)."
    )
    aws_secret_access_key: Optional[SecretStr] = Field(default=None, description="Secret access key.")
    aws_session_token: Optional[SecretStr] = Field(
        default=None, description="Session token of temporary keys."
    )
    profile_name: Optional[str] = Field(default=None, description="Named profile of ~/.aws/config.")
    endpoint_url: Optional[str] = Field(
        default=None, description="AWS-compatible endpoint URL (LocalStack, moto); default: AWS."
    )
    runner_cidr: Optional[str] = Field(
        default=None,
        description="Address allowed to reach Redis (the flow runner's public IP, e.g. '203.0.113.7/32'); "
        "default: detected via checkip.amazonaws.com.",
    )
    redis_port: int = Field(default=6379, ge=1, le=65535, description="Port of the Redis server task.")
    assign_public_ip: bool = Field(
        default=True,
        description="Give tasks public IPs (needed to pull public images without a NAT gateway).",
    )
    server_address: Literal["auto", "public", "private"] = Field(
        default="auto",
        description="How the flow runner dials Redis: the task's public IP if it has one (auto), or always "
        "public / private (runner inside the VPC).",
    )
    spot_workers: bool = Field(
        default=False,
        description="Run workers on Fargate Spot (cheaper; an interrupted worker re-queues its tasks).",
    )
    execution_role_arn: Optional[str] = Field(
        default=None, description="Task execution role; default: found by name or created (ECR, logs, SSM)."
    )
    execution_role_name: str = Field(
        default="dockerparallel-ecs-task-execution",
        description="Name of the execution role found or created.",
    )
    task_role_arn: Optional[str] = Field(
        default=None, description="Role the worker code runs as (e.g. for S3 result storage)."
    )
    log_group: Optional[str] = Field(
        default=None, description="CloudWatch log group; default: /dockerparallel/<cluster_name>."
    )
    log_retention_days: int = Field(
        default=7, ge=1, description="Retention of a log group this block creates."
    )
    platform_version: str = Field(default="LATEST", description="Fargate platform version.")
    cpu_architecture: Literal["X86_64", "ARM64"] = Field(
        default="X86_64", description="CPU architecture of the tasks (the image must match)."
    )
    start_timeout: float = Field(
        default=600, gt=0, description="Seconds for the server task to start and Redis to answer."
    )
    stop_timeout: float = Field(
        default=180,
        gt=0,
        description="Seconds teardown waits for tasks to stop before deleting the security group.",
    )

    @field_validator("runner_cidr")
    @classmethod
    def _check_cidr(cls, value: Optional[str]) -> Optional[str]:
        if value:
            from ..providers.ecs.settings import normalize_cidr

            return normalize_cidr(value)
        return value

    def build_provider(self) -> Provider:
        from ..providers.ecs.driver import EcsDriver
        from ..providers.ecs.settings import EcsSettings

        plain = self.model_dump(
            exclude={
                "kind",
                "block_type_slug",
                "aws_access_key_id",
                "aws_secret_access_key",
                "aws_session_token",
            }
        )
        plain = {k: v for k, v in plain.items() if k in EcsSettings.__dataclass_fields__}
        return EcsDriver(
            EcsSettings(
                **plain,
                aws_access_key_id=_secret(self.aws_access_key_id),
                aws_secret_access_key=_secret(self.aws_secret_access_key),
                aws_session_token=_secret(self.aws_session_token),
            )
        )
