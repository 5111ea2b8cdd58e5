"""The ClusterConfig block (seed: CloudConfig): provider, container, number and size of workers.

`DockerParallelTaskRunner(cluster="name")` loads a saved one at the first submit of a flow run.
"""

from __future__ import annotations

import re
from typing import Any, Union

from prefect.blocks.core import Block
from pydantic import Field, field_validator, model_validator

from ..providers.base import Provider
from ..specs import ClusterSpec
from ._common import UI_DOCS_URL
from .aks import AKSProvider
from .container import WorkerContainer
from .docker import DockerProvider
from .ecs import ECSFargateProvider
from .local import LocalProvider

_RESERVED_TAG_PREFIX = "dockerparallel-"
# The stricter of the AWS tag and Kubernetes label rules, so one set of tags fits every provider.
_TAG_KEY_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
_TAG_VALUE_RE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$")

PROVIDER_BLOCKS: tuple[type[Block], ...] = (LocalProvider, ECSFargateProvider, AKSProvider, DockerProvider)
_KIND_BY_SLUG = {cls.get_block_type_slug(): cls.model_fields["kind"].default for cls in PROVIDER_BLOCKS}


def _any_of(schema: dict[str, Any]) -> None:
    """The Prefect UI's schema form understands `anyOf` of block references, not `oneOf`."""
    if "oneOf" in schema:
        schema["anyOf"] = schema.pop("oneOf")
    schema.pop("discriminator", None)


# A plain Union (not Annotated/Tag): Prefect walks it to find nested secret fields (which the
# API then masks) and block schema references (which the UI needs to pick a saved provider).
ProviderBlock = Union[LocalProvider, ECSFargateProvider, AKSProvider, DockerProvider]


class ClusterConfig(Block):
    """A whole cluster: provider, container and sizes (seed: CloudConfig).

    `DockerParallelTaskRunner(cluster="name")` loads the saved document when a flow run first
    submits, so an edit in the Prefect UI applies to the next run without a redeploy.
    """

    _block_type_name = "DockerParallel Cluster Config"
    _block_type_slug = "dockerparallel-cluster-config"
    _description = (
        "Provider, worker container, number and size of workers of the cluster that "
        "DockerParallelTaskRunner(cluster=...) starts for each flow run."
    )
    _documentation_url = UI_DOCS_URL
    _code_example = """
    ```python
    from prefect import flow
    from prefect_dockerparallel import ClusterConfig, DockerParallelTaskRunner

    cluster_config = ClusterConfig.load("BLOCK_NAME")

    # or, to pick up edits of the block on every run without a redeploy:
    @flow(task_runner=DockerParallelTaskRunner(cluster="BLOCK_NAME"))
    def my_flow(): ...
    ```
    """

    provider: ProviderBlock = Field(
        default_factory=LocalProvider,
        description="Where the cluster runs: a Local, Docker, ECS Fargate or AKS provider block.",
        discriminator="kind",
        json_schema_extra=_any_of,
    )
    container: WorkerContainer = Field(
        default_factory=WorkerContainer, description="What each worker container runs."
    )
    workers: int = Field(default=2, ge=0, le=10_000, description="Number of worker task slots.")
    worker_cpu: int = Field(
        default=1024, gt=0, description="CPU units per worker slot (1024 = 1 vCPU)."
    )
    worker_memory: int = Field(default=2048, gt=0, description="Memory per worker slot in MB.")
    server_cpu: int = Field(
        default=256, gt=0, description="CPU units of the Redis server container (1024 = 1 vCPU)."
    )
    server_memory: int = Field(
        default=512, gt=0, description="Memory of the Redis server container in MB."
    )
    idle_timeout: float = Field(
        default=60,
        ge=5,
        le=86_400,
        description="Seconds without a driver heartbeat before the cluster stops itself (dead-man's switch).",
    )
    tags: dict[str, str] = Field(
        default_factory=dict, description="Extra tags (AWS) / labels (Kubernetes) on every resource."
    )

    @field_validator("provider", mode="before")
    @classmethod
    def _provider_kind(cls, value: Any) -> Any:
        """Documents saved from the UI carry `block_type_slug`; one saved without `kind` (an
        older schema, a cleared field) still loads as the right class through its slug, or
        else through its field names when exactly one provider class has them all."""
        if isinstance(value, dict) and not value.get("kind"):
            kind = _KIND_BY_SLUG.get(value.get("block_type_slug") or "")
            keys = {k for k in value if not k.startswith("_") and k != "block_type_slug"}
            if kind is None and keys:
                owners = [c for c in PROVIDER_BLOCKS if keys <= set(c.model_fields)]
                kind = owners[0].model_fields["kind"].default if len(owners) == 1 else None
            if kind is None:
                raise ValueError(
                    "provider: expected a provider block with kind 'local', 'ecs', 'aks' or 'docker' "
                    f"(got the keys {sorted(value)})"
                )
            value = {**value, "kind": kind}
        return value

    @classmethod
    def _from_block_document(cls, block_document: Any) -> "ClusterConfig":
        """When `provider` is a reference to a saved provider document (how the UI links
        blocks), the server returns the referenced data without its slug; take the slug from
        the reference so a provider saved without `kind` still resolves to its own class."""
        try:
            data = block_document.data
            provider = data.get("provider")
            ref = (block_document.block_document_references or {}).get("provider") or {}
            slug = ref["block_document"]["block_type"]["slug"] if ref else None
            if isinstance(provider, dict) and not provider.get("kind") and slug in _KIND_BY_SLUG:
                block_document = block_document.model_copy(
                    update={"data": {**data, "provider": {**provider, "kind": _KIND_BY_SLUG[slug]}}}
                )
        except (AttributeError, KeyError, TypeError):
            pass  # an unexpected document shape: let normal validation report it
        return super()._from_block_document(block_document)

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: dict[str, str]) -> dict[str, str]:
        for key, val in value.items():
            if not _TAG_KEY_RE.match(key):
                raise ValueError(
                    f"tags: key {key!r} is invalid: use 1-63 letters, digits, '-', '_' or '.', "
                    "starting and ending with a letter or digit"
                )
            if key.lower().startswith(_RESERVED_TAG_PREFIX):
                raise ValueError(
                    f"tags: key {key!r} is reserved: keys starting with {_RESERVED_TAG_PREFIX!r} identify "
                    "the cluster for `prefect-dockerparallel clusters cleanup`"
                )
            if not _TAG_VALUE_RE.match(val):
                raise ValueError(
                    f"tags: value {val!r} of {key!r} is invalid: use at most 63 letters, digits, '-', '_' "
                    "or '.', starting and ending with a letter or digit"
                )
        return value

    @model_validator(mode="after")
    def _provider_sizes(self) -> "ClusterConfig":
        """Fargate accepts only fixed CPU/memory pairs: check them when the block is saved or
        loaded (so a bad edit in the UI fails with the fix), not when a run starts paying."""
        if getattr(self.provider, "kind", None) == "ecs":
            from ..providers.ecs.sizes import check_exact, worker_container_size

            check_exact(self.server_cpu, self.server_memory, "server_cpu/server_memory: server")
            worker_container_size(self.worker_cpu, self.worker_memory, self.container.workers_per_container)
        return self

    def merged(self, **overrides: Any) -> "ClusterConfig":
        """A copy with the non-None `overrides` applied, validated like the block itself.

        Lets `DockerParallelTaskRunner(cluster="nightly", workers=16)` override one field of a
        saved document without editing it.
        """
        data = {k: v for k, v in overrides.items() if v is not None}
        unknown = set(data) - set(type(self).model_fields)
        if unknown:
            raise TypeError(f"unknown ClusterConfig field(s): {', '.join(sorted(unknown))}")
        fields = {name: getattr(self, name) for name in type(self).model_fields}
        fields.update(data)
        return type(self)(**fields)

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
