"""Save example ClusterConfig documents for a local, a Docker engine, an ECS Fargate and an AKS cluster.

    python blocks/save_examples.py                 # saves local-2, docker-example, ecs-example, aks-example
    python blocks/save_examples.py --only local     # just the local one

Then `DockerParallelTaskRunner(cluster="ecs-example")` uses one, and the Prefect UI (Blocks
page) edits it. Each example's provider and worker container are saved as their own blocks
(`ecs-example-provider`, `ecs-example-container`, ...) that the cluster config references: the
shape both Prefect UIs show in full and keep when you save. Credentials are read from the
environment (DOCKER_HOST, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, KUBECONFIG) and stored as secret fields,
which the API masks; leave them unset to rely on the default credential chain of the machine
that runs the flow. Saving makes no cloud API call: nothing is provisioned until a flow run
submits a task.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect.blocks.core import Block  # noqa: E402

from prefect_dockerparallel.blocks import (  # noqa: E402
    AKSProvider,
    ClusterConfig,
    DockerProvider,
    ECSFargateProvider,
    LocalProvider,
    WorkerContainer,
)


def _known(cls: type[Block], **values: Any) -> Block:
    """Build a provider block from the values its current schema knows (drop None and unknown
    names), so this script keeps working while provider blocks gain or rename fields."""
    fields = cls.model_fields
    return cls(**{k: v for k, v in values.items() if k in fields and v is not None})


def examples() -> dict[str, ClusterConfig]:
    """The example documents, by name."""
    kubeconfig = os.environ.get("KUBECONFIG")
    kubeconfig_text = Path(kubeconfig).read_text() if kubeconfig and Path(kubeconfig).is_file() else None
    return {
        "local-2": ClusterConfig(provider=LocalProvider(), container=WorkerContainer(), workers=2, idle_timeout=30),
        "docker-example": ClusterConfig(
            provider=_known(DockerProvider, docker_host=os.environ.get("DOCKER_HOST")),
            container=WorkerContainer(pip_packages=["numpy"], workers_per_container=2),
            workers=4,
            worker_cpu=1024,
            worker_memory=1024,
            tags={"team": "data", "env": "example"},
        ),
        "ecs-example": ClusterConfig(
            provider=_known(
                ECSFargateProvider,
                region_name=os.environ.get("AWS_REGION", "us-east-1"),
                aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID"),
                aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
            ),
            container=WorkerContainer(pip_packages=["numpy"], workers_per_container=2),
            workers=8,
            worker_cpu=1024,
            worker_memory=2048,
            tags={"team": "data", "env": "example"},
        ),
        "aks-example": ClusterConfig(
            provider=_known(AKSProvider, namespace="dockerparallel", kubeconfig=kubeconfig_text),
            container=WorkerContainer(pip_packages=["numpy"], workers_per_container=2),
            workers=8,
            worker_cpu=1024,
            worker_memory=2048,
            tags={"team": "data", "env": "example"},
        ),
    }


def save(only: list[str] | None = None, overwrite: bool = True) -> list[str]:
    """Save the examples (all, or the names in `only`); returns the names saved."""
    saved = []
    for name, config in examples().items():
        if only and not any(name.startswith(o) for o in only):
            continue
        config.save(name, overwrite=overwrite)
        saved.append(name)
    return saved


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=["local", "docker", "ecs", "aks"], help="save only this example")
    args = parser.parse_args()
    for name in save(args.only):
        print(f"saved ClusterConfig {name!r}")
