"""Prefect Blocks: the three components of the seed, editable in the Prefect UI.

`WorkerContainer` (what runs), a provider block (`LocalProvider`, `DockerProvider`,
`ECSFargateProvider`, `AKSProvider`: where it runs) and `ClusterConfig` (how many, how big), one module per family.
Blocks validate and turn themselves into frozen specs (`to_spec()`) and provider drivers
(`build_provider()`); nothing below this package sees a Block.

Validation happens here, when a block is built or loaded, so that a bad value typed in the UI
fails with the field's name before a flow run pays for anything.
"""

from __future__ import annotations

from prefect.blocks.core import Block

from .aks import AKSProvider
from .cluster_config import PROVIDER_BLOCKS, ClusterConfig
from .container import WorkerContainer
from .docker import DockerProvider
from .ecs import ECSFargateProvider
from .local import LocalProvider

BLOCK_TYPES: tuple[type[Block], ...] = (
    WorkerContainer,
    LocalProvider,
    DockerProvider,
    ECSFargateProvider,
    AKSProvider,
    ClusterConfig,
)
"""Every block type of the collection, in registration order (nested types first)."""

__all__ = [
    "AKSProvider",
    "BLOCK_TYPES",
    "ClusterConfig",
    "DockerProvider",
    "ECSFargateProvider",
    "LocalProvider",
    "PROVIDER_BLOCKS",
    "WorkerContainer",
]
