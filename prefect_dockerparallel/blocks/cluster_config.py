"""The ClusterConfig block (seed: CloudConfig): provider, container, number and size of workers.

`DockerParallelTaskRunner(cluster="name")` loads a saved one at the first submit of a flow run.
Saving one saves its provider and container as their own named blocks and references them, the
only shape that both Prefect UIs show in full and keep on save (see `_references.py`).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Optional, Union

from prefect.blocks.core import Block
from pydantic import Field, PrivateAttr, field_validator, model_validator

from ..providers.base import Provider
from ..specs import ClusterSpec
from . import _references as refs
from ._common import UI_DOCS_URL
from ._form import OptionalCount
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
_KINDS = ", ".join(repr(k) for k in _KIND_BY_SLUG.values())
NESTED_FIELDS = ("provider", "container")


def _any_of(schema: dict[str, Any]) -> None:
    """The Prefect UI's schema form understands `anyOf` of block references, not `oneOf`."""
    if "oneOf" in schema:
        schema["anyOf"] = schema.pop("oneOf")
    schema.pop("discriminator", None)


# A plain Union (not Annotated/Tag): Prefect walks it to find nested secret fields (which the
# API then masks) and block schema references (which the UI needs to pick a saved provider).
ProviderBlock = Union[LocalProvider, ECSFargateProvider, AKSProvider, DockerProvider]


def missing_provider_message(name: Optional[str]) -> str:
    return (
        f"ClusterConfig {name!r} has no provider, and a cluster config never defaults to the local "
        "machine: open it in the Prefect UI (Blocks > "
        f"{name} > Edit), choose a provider block under Provider and save, or save it from code "
        "with ClusterConfig(provider=LocalProvider() / DockerProvider(...) / ECSFargateProvider(...) / AKSProvider(...))"
    )


class ClusterConfig(refs.ReferencingParent, Block):
    """A whole cluster: provider, container and sizes (seed: CloudConfig).

    `DockerParallelTaskRunner(cluster="name")` loads the saved document when a flow run first
    submits, so an edit in the Prefect UI applies to the next run without a redeploy.
    """

    _block_type_name = "DockerParallel Cluster Config"
    _block_type_slug = "dockerparallel-cluster-config"
    _description = (
        "A DockerParallel cluster: where it runs (a provider block), what each worker runs (a "
        "worker container block), and how many workers of what size. A flow whose task runner "
        "names this block starts one such cluster per flow run and removes it at the end."
    )
    _documentation_url = UI_DOCS_URL
    _code_example = """
    ```python
    from prefect import flow
    from prefect_dockerparallel import ClusterConfig, DockerParallelTaskRunner

    cluster_config = ClusterConfig.load("BLOCK_NAME")
    print(cluster_config.provider, cluster_config.workers)

    # In a flow, give the block's name: the runner loads it when each flow run starts,
    # so UI edits apply to the next run, and no credential travels with the flow.
    @flow(task_runner=DockerParallelTaskRunner(cluster="the-block-name"))
    def my_flow(): ...
    ```
    """

    provider: ProviderBlock = Field(
        ...,
        title="Provider",
        description=(
            "Where the cluster runs. Required: pick the kind (Local, ECS Fargate, AKS, Docker), then "
            "a saved provider block of that kind or Add one."
        ),
        discriminator="kind",
        json_schema_extra=_any_of,
    )
    container: WorkerContainer = Field(
        default_factory=WorkerContainer,
        title="Worker Container",
        description="What each worker container runs (image, packages); empty: the default image.",
    )
    workers: int = Field(default=2, ge=0, le=10_000, description="Number of worker task slots.")
    min_workers: OptionalCount = Field(
        default=None, ge=0, le=10_000, title="Adaptive: Min Workers",
        description="With Max Workers: scale with the work, down to this many slots when idle (0 allowed).",
    )
    max_workers: OptionalCount = Field(
        default=None, ge=1, le=10_000, title="Adaptive: Max Workers",
        description="Adaptive scaling: at most this many slots while tasks wait. Empty: a fixed size of Workers.",
    )
    keep_alive: OptionalCount = Field(
        default=None, ge=1, le=86_400, title="Warm: Keep Alive (s)",
        description=("Keep the cluster up this many seconds after a flow run ends, for the next run of this "
                     "configuration to attach to. Empty: tear down at each run's end."),
    )
    scale_down_after: float = Field(
        default=60, ge=0, le=86_400, title="Adaptive: Scale Down After",
        description="Adaptive scaling: seconds of idle slots (and no waiting task) before they are retired.",
    )
    worker_cpu: int = Field(
        default=1024, gt=0, title="Worker CPU", description="CPU units per worker slot (1024 = 1 vCPU)."
    )
    worker_memory: int = Field(default=2048, gt=0, description="Memory per worker slot, in MB.")
    server_cpu: int = Field(
        default=256, gt=0, title="Server CPU", description="CPU units of the Redis server container (1024 = 1 vCPU)."
    )
    server_memory: int = Field(default=512, gt=0, description="Memory of the Redis server container, in MB.")
    idle_timeout: float = Field(
        default=60,
        ge=5,
        le=86_400,
        description="Seconds without a driver heartbeat before the cluster stops itself (dead-man's switch).",
    )
    tags: dict[str, str] = Field(
        default_factory=dict,
        description=(
            'Extra AWS tags / Kubernetes labels on every resource, as a JSON object of strings, e.g. '
            '{"team": "data", "env": "prod"}. Keys and values: letters, digits, "-", "_", "." (max 63).'
        ),
        examples=[{"team": "data", "env": "prod"}],
    )

    # Set by `_from_block_document`: referenced documents without their self-reference stamp
    # (created in a UI), and nested fields stored embedded (saved by an older version).
    _unstamped: list[str] = PrivateAttr(default_factory=list)
    _embedded: list[str] = PrivateAttr(default_factory=list)
    _nested_fields: ClassVar[tuple[str, ...]] = NESTED_FIELDS

    @field_validator("provider", mode="before")
    @classmethod
    def _provider_kind(cls, value: Any) -> Any:
        """Documents saved from the UI carry no `kind` (it is not a form field): the provider
        class comes from the block type slug, else from its field names when exactly one
        provider class has them all."""
        if value is None or value == {}:
            raise ValueError(
                "provider is required: choose LocalProvider(), DockerProvider(...), ECSFargateProvider(...) or AKSProvider(...) "
                "(a cluster config never defaults to the local machine)"
            )
        value = refs.without_stamp(value)
        if isinstance(value, dict) and not value.get("kind"):
            kind = _KIND_BY_SLUG.get(value.get("block_type_slug") or "")
            keys = {k for k in value if not k.startswith(("_", "$")) and k != "block_type_slug"}
            if kind is None and keys:
                owners = [c for c in PROVIDER_BLOCKS if keys <= set(c.model_fields)]
                kind = owners[0].model_fields["kind"].default if len(owners) == 1 else None
            if kind is None:
                raise ValueError(f"provider: expected a provider block with kind {_KINDS} (got the keys {sorted(value)})")
            value = {**value, "kind": kind}
        return value

    @field_validator("container", mode="before")
    @classmethod
    def _container_data(cls, value: Any) -> Any:
        return refs.without_stamp(value)

    @classmethod
    def _from_block_document(cls, block_document: Any) -> "ClusterConfig":
        """Load any stored shape: referenced nested blocks (the API inlines their data, with
        their stamp), embedded ones (older saves), or a UI copy. A document without a provider,
        or whose provider lost its secrets to a UI copy, fails here, before anything starts."""
        name = block_document.name
        data = dict(block_document.data or {})
        references = block_document.block_document_references or {}
        if not data.get("provider"):
            raise ValueError(missing_provider_message(name))
        unstamped, embedded = [], []
        for field in NESTED_FIELDS:
            value = data.get(field)
            if not isinstance(value, dict):
                continue
            document = (references.get(field) or {}).get("block_document") or {}
            if document.get("id"):
                if not refs.is_stamped(value, document["id"]):
                    unstamped.append(str(document["id"]))
            elif refs.SELF_REF not in value:
                embedded.append(field)
            value = refs.without_stamp(value)
            slug = (document.get("block_type") or {}).get("slug")
            if field == "provider" and not value.get("kind") and slug in _KIND_BY_SLUG:
                value = {**value, "kind": _KIND_BY_SLUG[slug]}
            data[field] = value
        block = super()._from_block_document(block_document.model_copy(update={"data": data}))
        masked = refs.masked_secret_fields(block.provider, "provider") + refs.masked_secret_fields(
            block.container, "container"
        )
        if masked:
            raise ValueError(
                f"ClusterConfig {name!r}: {', '.join(masked)} holds the Prefect API's mask {refs.MASK!r} "
                "instead of the secret (a UI saved a copy of the provider block instead of a reference "
                f"to it): open Blocks > {name} > Edit, choose the provider block again and save, or "
                "save the ClusterConfig from code"
            )
        block._unstamped, block._embedded = unstamped, embedded
        return block

    def repair_ui_links(self) -> list[str]:
        """Stamp the referenced provider/container documents that lack their self-reference
        (blocks created in a UI), so the V2 UI keeps the references; returns the document ids.
        Called when a flow run loads the block; best effort (a read-only API key may refuse)."""
        ids, self._unstamped = list(self._unstamped), []
        refs.stamp_sync(ids)
        return ids


    @field_validator("tags")
    @classmethod
    def _tags(cls, value: dict[str, str]) -> dict[str, str]:
        for key, val in value.items():
            if not _TAG_KEY_RE.fullmatch(key):
                raise ValueError(
                    f"tags: key {key!r} is invalid: use 1-63 letters, digits, '-', '_' or '.', "
                    "starting and ending with a letter or digit"
                )
            if key.lower().startswith(_RESERVED_TAG_PREFIX):
                raise ValueError(
                    f"tags: key {key!r} is reserved: keys starting with {_RESERVED_TAG_PREFIX!r} identify "
                    "the cluster for `prefect-dockerparallel clusters cleanup`"
                )
            if not _TAG_VALUE_RE.fullmatch(val):
                raise ValueError(
                    f"tags: value {val!r} of {key!r} is invalid: use at most 63 letters, digits, '-', '_' "
                    "or '.', starting and ending with a letter or digit"
                )
        return value

    @model_validator(mode="after")
    def _adaptive_bounds(self) -> "ClusterConfig":
        from ..adaptive import AdaptivePolicy

        AdaptivePolicy.from_fields(self.min_workers, self.max_workers, self.scale_down_after)
        return self

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
