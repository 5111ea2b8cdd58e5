"""Settings of the collection, declared the way Prefect integrations declare theirs.

`PREFECT_INTEGRATIONS_DOCKERPARALLEL_CLUSTER=nightly` (or `[integrations.dockerparallel]
cluster = "nightly"` in `prefect.toml`, or `[tool.prefect.integrations.dockerparallel]` in
`pyproject.toml`) makes `DockerParallelTaskRunner()` with no arguments load the saved
`ClusterConfig` "nightly", so a work pool or a `.env` file can move every flow to a cloud
cluster without touching flow code.
"""

from __future__ import annotations

from typing import Optional

from prefect.settings.base import PrefectBaseSettings, build_settings_config
from pydantic import Field

CLUSTER_ENV_VAR = "PREFECT_INTEGRATIONS_DOCKERPARALLEL_CLUSTER"


class DockerParallelSettings(PrefectBaseSettings):
    """Settings under the `PREFECT_INTEGRATIONS_DOCKERPARALLEL_` prefix."""

    model_config = build_settings_config(("integrations", "dockerparallel"))

    cluster: Optional[str] = Field(
        default=None,
        description="Name of the saved ClusterConfig block used by DockerParallelTaskRunner() "
        "when it is given no cluster, provider or container.",
    )


def default_cluster_block_name() -> Optional[str]:
    """The configured default ClusterConfig block name, or None for the local cluster.

    Read afresh on every call (no caching): the runner calls it once per flow run, and tests
    and deployments change the environment between runs. Blank values count as unset.
    """
    name = DockerParallelSettings().cluster
    if name is None or not name.strip():
        return None
    return name.strip()
