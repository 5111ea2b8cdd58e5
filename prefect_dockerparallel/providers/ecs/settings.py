"""Settings of the ECS driver as one frozen value, so the block maps fields 1:1 and a
driver's configuration can be compared, logged (no secrets in repr) and copied."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

IP_CHECK_URL = "https://checkip.amazonaws.com"


def normalize_cidr(value: str) -> str:
    """'203.0.113.7' or '203.0.113.7/32' -> '203.0.113.7/32'; refuses any-address ranges."""
    net = ipaddress.ip_network(value if "/" in value else f"{value}/32", strict=False)
    if net.prefixlen == 0:
        raise ValueError(f"runner_cidr={value!r} would open Redis to the whole internet: give your IP")
    return str(net)


@dataclass(frozen=True)
class EcsSettings:
    region_name: str = "us-east-1"
    cluster_name: str = "docker-parallel-cluster"  # ECS cluster, reused by every run
    server_task_family: str = "docker-parallel-server"
    worker_task_family: str = "docker-parallel-worker"
    security_group_name: str = "docker-parallel-security-group"  # prefix of per-run groups
    vpc_id: str | None = None
    subnet_id: str | None = None
    security_group_id: str | None = None  # extra group attached to every task
    internet_gateway_id: str | None = None
    route_table_id: str | None = None
    aws_access_key_id: str | None = field(default=None, repr=False)
    aws_secret_access_key: str | None = field(default=None, repr=False)
    aws_session_token: str | None = field(default=None, repr=False)
    profile_name: str | None = None
    endpoint_url: str | None = None
    runner_cidr: str | None = None  # Redis ingress source; detected when None
    redis_port: int = 6379
    assign_public_ip: bool = True
    server_address: str = "auto"  # how the driver dials Redis: auto | public | private
    spot_workers: bool = False
    execution_role_arn: str | None = None
    execution_role_name: str = "dockerparallel-ecs-task-execution"
    task_role_arn: str | None = None
    log_group: str | None = None  # default: /dockerparallel/<cluster_name>
    log_retention_days: int = 7
    platform_version: str = "LATEST"
    cpu_architecture: str = "X86_64"
    start_timeout: float = 600.0  # image pull + package install + Redis ready
    tls: bool = True  # per-cluster CA; the key reaches the server as an SSM SecureString
    tls_lifetime_hours: float = 24.0
    stop_timeout: float = 180.0  # tasks STOPPED and security group deletable
    poll_interval: float = 5.0
    max_worker_failures: int = 10
    ip_check_url: str = IP_CHECK_URL
    backoff_base: float = 0.5

    def __post_init__(self) -> None:
        if self.server_address not in ("auto", "public", "private"):
            raise ValueError(
                f"server_address={self.server_address!r} is invalid: use auto, public or private"
            )
        if not 1 <= self.redis_port <= 65535:
            raise ValueError(f"redis_port={self.redis_port} is invalid: use 1-65535")
        if self.cpu_architecture not in ("X86_64", "ARM64"):
            raise ValueError(f"cpu_architecture={self.cpu_architecture!r} is invalid: use X86_64 or ARM64")
        if self.spot_workers and self.cpu_architecture == "ARM64":
            raise ValueError("Fargate Spot does not run ARM64 tasks: use cpu_architecture='X86_64'")
        if self.runner_cidr:
            object.__setattr__(self, "runner_cidr", normalize_cidr(self.runner_cidr))
        if not self.log_group:
            object.__setattr__(self, "log_group", f"/dockerparallel/{self.cluster_name}")

    @property
    def families(self) -> tuple[str, str]:
        return (self.server_task_family, self.worker_task_family)

    @property
    def given_network(self) -> dict[str, str | None]:
        return {
            "vpc_id": self.vpc_id,
            "subnet_id": self.subnet_id,
            "internet_gateway_id": self.internet_gateway_id,
            "route_table_id": self.route_table_id,
        }
