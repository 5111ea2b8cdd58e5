"""The ECSFargateProvider block (shell: filled in by the ECS issue). boto3 is imported lazily."""

from __future__ import annotations

from typing import Literal, Optional

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from .providers.base import Provider


class ECSFargateProvider(Block):
    """Runs the Redis server and workers as AWS ECS Fargate tasks, one cluster per flow run."""

    _block_type_name = "DockerParallel ECS Fargate Provider"
    _block_type_slug = "dockerparallel-ecs-fargate-provider"
    _description = "Per-flow-run clusters on AWS ECS Fargate."

    kind: Literal["ecs"] = "ecs"
    region_name: str = Field(default="us-east-1", description="AWS region.")
    cluster_name: str = Field(default="docker-parallel-cluster", description="ECS cluster name.")
    aws_access_key_id: Optional[str] = Field(default=None, description="Access key id; default: boto3 chain.")
    aws_secret_access_key: Optional[SecretStr] = Field(default=None, description="Secret access key.")
    endpoint_url: Optional[str] = Field(default=None, description="AWS-compatible endpoint URL.")

    def build_provider(self) -> Provider:
        from .providers.ecs import EcsDriver  # noqa: F401  (filled in by the ECS issue)

        raise NotImplementedError("ECSFargateProvider is not implemented yet")
