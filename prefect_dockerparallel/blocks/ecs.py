"""The ECSFargateProvider block: where an ECS cluster runs, editable in the Prefect UI.

The block only validates and maps its fields onto `EcsDriver`'s plain settings; boto3 is
imported when `build_provider()` is called, never when the collection is imported.
"""

from __future__ import annotations

from typing import Literal, Optional

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, field_validator

from ..providers.base import Provider
from ._form import Hidden, OptionalSecret, OptionalText
from ._references import SelfReferencing


def _secret(value: Optional[SecretStr]) -> Optional[str]:
    return value.get_secret_value() if value is not None else None


class ECSFargateProvider(SelfReferencing, Block):
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
    _code_example = """
    ```python
    from prefect import flow
    from prefect_dockerparallel import ECSFargateProvider, ClusterConfig, DockerParallelTaskRunner

    ecs = ECSFargateProvider.load("BLOCK_NAME")
    # Save a cluster config that references this provider, then name it in the flow:
    ClusterConfig(provider=ecs, workers=8, worker_cpu=1024, worker_memory=2048).save("ecs-8", overwrite=True)

    @flow(task_runner=DockerParallelTaskRunner(cluster="ecs-8"))
    def my_flow(): ...
    ```
    """

    kind: Hidden[Literal["ecs"]] = Field(default="ecs", description="Provider discriminator (not a form field).")
    region_name: str = Field(default="us-east-1", title="AWS Region", description="AWS region of every resource.")
    cluster_name: str = Field(
        default="docker-parallel-cluster",
        title="ECS Cluster Name",
        description="ECS cluster (created if missing and reused by every run); also tags the shared network.",
    )
    server_task_family: str = Field(
        default="docker-parallel-server", title="Server Task Family", description="Task definition family of the Redis server task."
    )
    worker_task_family: str = Field(
        default="docker-parallel-worker", description="Task definition family of the worker tasks."
    )
    security_group_name: str = Field(
        default="docker-parallel-security-group",
        description="Name prefix of the per-run security group (Redis from the runner and the cluster only).",
    )
    vpc_id: OptionalText = Field(
        default=None, title="VPC ID", description="Existing VPC; empty: found by tag or created.",
        examples=["vpc-0123456789abcdef0"],
    )
    subnet_id: OptionalText = Field(
        default=None,
        title="Subnet ID",
        description="Existing subnet (its routing is left alone); empty: found by tag or created.",
        examples=["subnet-0123456789abcdef0"],
    )
    security_group_id: OptionalText = Field(
        default=None,
        title="Extra Security Group ID",
        description="Existing security group attached to every task in addition to the per-run one; empty: none.",
        examples=["sg-0123456789abcdef0"],
    )
    internet_gateway_id: OptionalText = Field(
        default=None, title="Internet Gateway ID", description="Existing internet gateway; empty: the VPC's, or created.",
        examples=["igw-0123456789abcdef0"],
    )
    route_table_id: OptionalText = Field(
        default=None,
        title="Route Table ID",
        description="Existing route table to add the default route to; empty: found or created.",
        examples=["rtb-0123456789abcdef0"],
    )
    aws_access_key_id: OptionalSecret = Field(
        default=None,
        title="AWS Access Key ID",
        description="Access key ID; empty: the profile below, then the boto3 chain (environment, SSO, instance role).",
    )
    aws_secret_access_key: OptionalSecret = Field(
        default=None, title="AWS Secret Access Key", description="Secret access key of that key ID."
    )
    aws_session_token: OptionalSecret = Field(
        default=None, title="AWS Session Token", description="Session token of temporary keys; empty for long-term keys."
    )
    profile_name: OptionalText = Field(
        default=None, title="AWS Profile", description="Named profile of ~/.aws/config; empty: the default chain.",
    )
    endpoint_url: OptionalText = Field(
        default=None,
        title="Endpoint URL",
        description="AWS-compatible endpoint (LocalStack, moto); empty: AWS itself.",
        examples=["http://localhost:4566"],
    )
    runner_cidr: OptionalText = Field(
        default=None,
        title="Runner CIDR",
        description="Address range allowed to reach Redis (the flow runner's public IP); "
        "empty: this machine's IP, detected via checkip.amazonaws.com.",
        examples=["203.0.113.7/32"],
    )
    redis_port: int = Field(default=6379, ge=1, le=65535, title="Redis Port", description="Port of the Redis server task.")
    assign_public_ip: bool = Field(
        default=True,
        title="Assign Public IP",
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
    execution_role_arn: OptionalText = Field(
        default=None,
        title="Execution Role ARN",
        description="Task execution role; empty: found by the name below or created (ECR, logs, SSM).",
        examples=["arn:aws:iam::123456789012:role/my-ecs-execution-role"],
    )
    execution_role_name: str = Field(
        default="dockerparallel-ecs-task-execution",
        title="Execution Role Name",
        description="Name of the execution role found or created.",
    )
    task_role_arn: OptionalText = Field(
        default=None,
        title="Task Role ARN",
        description="Role the worker code runs as (e.g. for S3 result storage); empty: none.",
        examples=["arn:aws:iam::123456789012:role/my-task-role"],
    )
    log_group: OptionalText = Field(
        default=None,
        title="CloudWatch Log Group",
        description="Log group of the tasks; empty: /dockerparallel/ followed by the ECS cluster name.",
    )
    log_retention_days: int = Field(
        default=7, ge=1, description="Retention of a log group this block creates."
    )
    platform_version: str = Field(default="LATEST", description="Fargate platform version.")
    cpu_architecture: Literal["X86_64", "ARM64"] = Field(
        default="X86_64", title="CPU Architecture", description="CPU architecture of the tasks (the image must match)."
    )
    start_timeout: float = Field(
        default=600, gt=0, description="Seconds for the server task to start and Redis to answer."
    )
    tls: bool = Field(
        default=True,
        title="TLS",
        description=(
            "Encrypt Redis traffic (it crosses the internet to the server's public IP) with a per-cluster "
            "CA; the server's key is an SSM SecureString like the password. Off: the password, payloads "
            "and PREFECT_API_KEY travel in clear and every cluster start logs a warning."
        ),
    )
    tls_lifetime_hours: float = Field(
        default=24, gt=0, title="TLS Certificate Lifetime (hours)",
        description="How long a cluster's certificate is valid; a cluster older than this refuses new connections.",
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
