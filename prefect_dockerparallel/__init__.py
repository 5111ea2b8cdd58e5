"""prefect-dockerparallel: a per-flow-run cluster of worker containers for Prefect.

Importing the collection must stay cheap and must not import boto3 or kubernetes: every Prefect
process imports installed collections.
"""

from .blocks import AKSProvider, ClusterConfig, ECSFargateProvider, LocalProvider, WorkerContainer
from .cluster import DockerCluster
from .specs import ClusterSpec, ContainerSpec, WorkerNumbers
from .task_runner import DockerParallelTaskRunner

__version__ = "0.1.0"

__all__ = [
    "AKSProvider",
    "ClusterConfig",
    "ClusterSpec",
    "ContainerSpec",
    "DockerCluster",
    "DockerParallelTaskRunner",
    "ECSFargateProvider",
    "LocalProvider",
    "WorkerContainer",
    "WorkerNumbers",
    "__version__",
]
