"""The WorkerContainer block (seed: DockerContainer): the image and what it installs at start."""

from __future__ import annotations

import re
from typing import Optional

from prefect.blocks.core import Block
from pydantic import Field, field_validator

from ..specs import DEFAULT_IMAGE, ContainerSpec
from ._common import UI_DOCS_URL, _check_packages
from ._form import OptionalText
from ._references import SelfReferencing

_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED_ENV_PREFIX = "DOCKERPARALLEL_"
_SSH_KEY_RE = re.compile(r"^(ssh-(rsa|ed25519|dss)|ecdsa-sha2-\S+|sk-\S+) [A-Za-z0-9+/=]+( .*)?$")


class WorkerContainer(SelfReferencing, Block):
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
    worker_container.add_pip_packages("numpy", "pandas==2.2.3")
    worker_container.save(overwrite=True)  # back to the same block
    ```
    """

    image: str = Field(
        default=DEFAULT_IMAGE,
        title="Image",
        description="Worker image; it needs Python and the same Prefect and cloudpickle versions as the flow.",
    )
    workers_per_container: int = Field(
        default=4, ge=1, le=64, title="Workers per Container", description="Task slots (worker processes) in each container."
    )
    pip_packages: list[str] = Field(
        default_factory=list,
        title="pip Packages",
        description='pip requirements installed when a worker container starts, one per item (a JSON list in the form that asks for JSON), e.g. ["numpy", "pandas==2.2.3"].',
        examples=[["numpy", "pandas==2.2.3"]],
    )
    system_packages: list[str] = Field(
        default_factory=list,
        title="System (apt) Packages",
        description='Debian/Ubuntu packages installed with apt-get when a worker container starts, one per item (JSON list), e.g. ["git", "libgomp1"].',
        examples=[["git", "libgomp1"]],
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        title="Environment Variables",
        description=(
            'Extra environment variables of each worker, as a JSON object of strings, e.g. {"OMP_NUM_THREADS": "1"}. '
            "Shown in clear in the UI: put no secrets here."
        ),
        examples=[{"OMP_NUM_THREADS": "1"}],
    )
    ssh_public_key: OptionalText = Field(
        default=None,
        title="SSH Public Key",
        description="One OpenSSH public key line (the .pub file) allowed to log into worker containers; empty: no sshd.",
        examples=["ssh-ed25519 AAAA... me@host"],
    )
    install_self: OptionalText = Field(
        default="prefect-dockerparallel",
        title="Install prefect-dockerparallel",
        description=(
            'pip requirement that installs prefect-dockerparallel when a container starts, for the server '
            'container and for workers with Ship Package off; "none" (from code: None) when the image already has the package.'
        ),
    )
    ship_package: bool = Field(
        default=True,
        title="Ship Package",
        description=(
            "Workers start with a standard-library bootstrap that fetches prefect-dockerparallel (and your "
            "code) from the cluster's Redis as a signed archive: any image with the flow's Python and Prefect "
            "works, with no build and no PyPI. An image that has the same package sources skips the fetch."
        ),
    )
    ship_code: bool = Field(
        default=True,
        title="Ship My Code",
        description=(
            "Ship the modules your flow imports from outside site-packages and the standard library "
            "(the project folder, editable installs) to the workers."
        ),
    )
    code_paths: list[str] = Field(
        default_factory=list,
        title="Code Paths",
        description=(
            'Folders or .py files shipped to the workers too, importable by their own names, one per item (JSON list), e.g. ["src/mypkg", "tools.py"] '
            "(relative to the flow runner's working directory)."
        ),
        examples=[["src/mypkg"]],
    )
    max_code_mb: float = Field(
        default=100, gt=0, title="Max Code (MB)", description="Cap on the size of the code shipped to the workers."
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
        if value and value.strip().lower() == "none":
            return None  # the V2 UI cannot save an emptied field with a default: it restores the default
        if value:
            _check_packages("install_self", [value])
        return value or None

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _ENV_NAME_RE.fullmatch(name):
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
        if not _SSH_KEY_RE.fullmatch(value):
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
            ship_package=self.ship_package,
            ship_code=self.ship_code,
            code_paths=tuple(self.code_paths),
            max_code_mb=self.max_code_mb,
        )
