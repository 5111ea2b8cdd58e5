"""The AKSProvider block (shell: filled in by the AKS issue). kubernetes is imported lazily."""

from __future__ import annotations

from typing import Literal, Optional

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from .providers.base import Provider


class AKSProvider(Block):
    """Runs the Redis server and workers in a Kubernetes namespace (AKS or any cluster)."""

    _block_type_name = "DockerParallel AKS Provider"
    _block_type_slug = "dockerparallel-aks-provider"
    _description = "Per-flow-run clusters on Azure AKS or any Kubernetes cluster."

    kind: Literal["aks"] = "aks"
    namespace: str = Field(default="default", description="Kubernetes namespace.")
    kubeconfig: Optional[SecretStr] = Field(default=None, description="kubeconfig document.")
    context: Optional[str] = Field(default=None, description="kubeconfig context.")

    def build_provider(self) -> Provider:
        raise NotImplementedError("AKSProvider is not implemented yet")
