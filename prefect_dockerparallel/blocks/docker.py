"""The DockerProvider block: per-flow-run clusters on a Docker engine, editable in the Prefect UI.

The block only validates and hands plain values to `providers.docker.DockerDriver`; the Docker
SDK is imported when the driver first talks to the engine, never when Prefect imports this
collection.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Literal, Optional
from urllib.parse import urlparse

from prefect.blocks.core import Block
from pydantic import Field, field_validator

from ..providers.base import Provider
from ._form import Hidden, OptionalText
from ._references import SelfReferencing

DOCKER_HOST_SCHEMES = ("unix", "ssh", "tcp", "npipe", "http", "https")


class DockerProvider(SelfReferencing, Block):
    """Runs the Redis server and worker containers on a Docker engine: this machine's, or a
    remote one over ssh:// or tcp:// with TLS. Each flow run gets its own bridge network; Redis
    is published on one address only; worker_cpu / worker_memory are real container limits."""

    _block_type_name = "DockerParallel Docker Provider"
    _block_type_slug = "dockerparallel-docker-provider"
    _description = (
        "Per-flow-run clusters on a Docker engine (local socket, ssh:// or tcp:// with TLS): a Redis "
        "server container and worker containers on their own network, removed when the flow run ends."
    )
    _documentation_url = "https://github.com/prefect-dockerparallel/prefect-dockerparallel/blob/main/docs/docker.md"
    _code_example = """
    ```python
    from prefect_dockerparallel import DockerProvider
    from prefect_dockerparallel import DockerParallelTaskRunner, WorkerContainer

    docker_provider = DockerProvider.load("BLOCK_NAME")
    runner = DockerParallelTaskRunner(provider=docker_provider, workers=4,
                                      container=WorkerContainer(image="my-worker:py3.11", install_self=""))
    ```
    """

    kind: Hidden[Literal["docker"]] = Field(default="docker", description="Provider discriminator (not a form field).")
    docker_host: OptionalText = Field(
        default=None,
        title="Docker Host",
        examples=["ssh://user@build-box"],
        description=(
            "The engine, as in DOCKER_HOST: unix:///var/run/docker.sock, ssh://user@host or "
            "tcp://host:2376. Empty: DOCKER_HOST where the flow runs, else the local socket."
        ),
    )
    tls_cert_path: OptionalText = Field(
        default=None,
        title="TLS Certificate Folder",
        examples=["/etc/docker/client-certs"],
        description="tcp:// with TLS: folder with this client's ca.pem, cert.pem and key.pem (as DOCKER_CERT_PATH).",
    )
    publish_address: OptionalText = Field(
        default=None,
        title="Publish IP Address",
        examples=["10.0.0.5"],
        description=(
            "IP address of the engine's machine on which Redis's port is published (only that one). "
            "Empty: 127.0.0.1 for a local engine, else the address docker_host's name resolves to."
        ),
    )
    server_address: OptionalText = Field(
        default=None,
        title="Redis Server Address",
        description="Host the flow runner connects to for Redis; empty: the publish address (e.g. set it behind NAT).",
    )
    pull: Literal["missing", "always", "never"] = Field(
        default="missing",
        title="Pull Image", description="Pull the image when it is missing on the engine, always, or never."
    )
    start_timeout: float = Field(
        default=120, gt=0, description="Seconds to wait for the Redis server container to answer (pulls excluded)."
    )
    tls: bool = Field(
        default=True,
        title="TLS",
        description=(
            "Encrypt Redis traffic with a per-cluster CA and server certificate (verified by the flow "
            "runner and the workers). Off: the password, payloads and PREFECT_API_KEY travel in clear "
            "and every cluster start logs a warning."
        ),
    )
    tls_lifetime_hours: float = Field(
        default=24, gt=0, title="TLS Certificate Lifetime (hours)",
        description="How long a cluster's certificate is valid; a cluster older than this refuses new connections.",
    )

    @field_validator("docker_host", "tls_cert_path", "server_address", "publish_address")
    @classmethod
    def _blank_is_none(cls, value: Optional[str]) -> Optional[str]:
        return value.strip() or None if value is not None else None

    @field_validator("docker_host")
    @classmethod
    def _docker_host(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and urlparse(value).scheme not in DOCKER_HOST_SCHEMES:
            raise ValueError(
                f"docker_host: {value!r} is not an engine address such as unix:///var/run/docker.sock, "
                "ssh://user@host or tcp://host:2376"
            )
        return value

    @field_validator("publish_address")
    @classmethod
    def _publish_address(cls, value: Optional[str], info: Any) -> Optional[str]:
        if value is not None:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise ValueError(f"publish_address: {value!r} is not an IP address such as 10.0.0.5") from None
        return value

    def build_provider(self) -> Provider:
        from ..providers.docker.driver import DockerDriver

        return DockerDriver(
            docker_host=self.docker_host,
            tls_cert_path=self.tls_cert_path,
            publish_address=self.publish_address,
            server_address=self.server_address,
            pull=self.pull,
            start_timeout=self.start_timeout,
            tls=self.tls,
            tls_lifetime=self.tls_lifetime_hours * 3600,
        )
