"""prefect-dockerparallel: a per-flow-run cluster of worker containers for Prefect.

Public names load lazily, so the container entrypoints (`python -m
prefect_dockerparallel.container.server` / `.container.worker`) start without importing Prefect,
and importing the collection never imports boto3, kubernetes or the Docker SDK. When Prefect itself loads the collection (it is already imported then), the blocks
are imported at once so that Prefect's block registry knows them.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "AKSProvider": "blocks",
    "ClusterConfig": "blocks",
    "DockerProvider": "blocks",
    "ECSFargateProvider": "blocks",
    "LocalProvider": "blocks",
    "WorkerContainer": "blocks",
    "DockerCluster": "cluster",
    "ClusterSpec": "specs",
    "ContainerSpec": "specs",
    "WorkerNumbers": "specs",
    "DockerParallelTaskRunner": "task_runner",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'prefect_dockerparallel' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if "prefect" in sys.modules:  # loaded as a Prefect collection: register the block types now
    from . import blocks as _blocks  # noqa: F401
