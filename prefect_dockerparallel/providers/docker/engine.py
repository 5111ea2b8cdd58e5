"""Reaching a Docker engine: the local socket, or any DOCKER_HOST (ssh://, tcp:// with TLS).

Also decides where the server's Redis port is published: on the one address the flow runner
reaches the engine's machine by (127.0.0.1 for a local engine), never on every interface.
The Docker SDK is imported here and in the driver only, when a client is first needed.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..base import ProviderError

INSTALL_HINT = "the Docker provider needs the Docker SDK for Python: pip install 'prefect-dockerparallel[docker]'"


def docker_sdk() -> Any:
    try:
        import docker
    except ImportError:
        raise ProviderError(INSTALL_HINT) from None
    return docker


@dataclass(frozen=True)
class EngineConfig:
    """How to reach the engine; plain values so the janitor process can be given them."""

    docker_host: str | None = None  # None: $DOCKER_HOST, else the local socket
    tls_cert_path: str | None = None  # ca.pem, cert.pem, key.pem (as DOCKER_CERT_PATH)
    use_ssh_client: bool = True  # ssh://: the system's ssh (agent, ~/.ssh/config), not paramiko
    timeout: float = 60.0

    @property
    def host(self) -> str:
        return self.docker_host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"

    def as_dict(self) -> dict[str, Any]:
        return {"docker_host": self.docker_host, "tls_cert_path": self.tls_cert_path,
                "use_ssh_client": self.use_ssh_client, "timeout": self.timeout}

    def connect(self) -> Any:
        """A `docker.DockerClient` that answered a ping; ProviderError naming the engine if not.

        Connection settings follow the docker CLI's (DOCKER_HOST, DOCKER_TLS_VERIFY,
        DOCKER_CERT_PATH); the block's fields override them."""
        docker = docker_sdk()
        env = dict(os.environ)
        if self.docker_host:
            env["DOCKER_HOST"] = self.docker_host
        if self.tls_cert_path:
            folder = Path(self.tls_cert_path).expanduser()
            missing = [n for n in ("ca.pem", "cert.pem", "key.pem") if not (folder / n).is_file()]
            if missing:
                raise ProviderError(
                    f"tls_cert_path={str(folder)!r} lacks {', '.join(missing)} (the docker CLI's TLS file names)"
                )
            env.update(DOCKER_CERT_PATH=str(folder), DOCKER_TLS_VERIFY="1")
        try:
            client = docker.from_env(environment=env, timeout=int(self.timeout), use_ssh_client=self.use_ssh_client)
            client.ping()
        except Exception as exc:  # noqa: BLE001 - DockerException, connection errors, bad TLS files
            raise ProviderError(
                f"cannot reach the Docker engine at {self.host}: {exc}. Start dockerd (or Docker "
                "Desktop), check DOCKER_HOST / docker_host, and that this user may use the engine "
                "(the docker group, or rootless Docker's socket)"
            ) from None
        return client


def engine_machine(host: str) -> str | None:
    """The engine's machine as this process names it: None for a local engine (a unix socket,
    a named pipe, or tcp/ssh to a loopback address), else the host name of DOCKER_HOST."""
    url = urlparse(host)
    if url.scheme in ("unix", "npipe", "http+unix", "") or not url.hostname:
        return None
    if url.hostname == "localhost":
        return None
    try:
        if ipaddress.ip_address(url.hostname).is_loopback:
            return None
    except ValueError:
        pass
    return url.hostname


def publish_address(host: str, configured: str | None) -> str:
    """The engine-side address Redis is published on (only that one)."""
    if configured:
        return configured
    machine = engine_machine(host)
    if machine is None:
        return "127.0.0.1"
    try:  # the engine's address on the path this machine takes to it
        return socket.getaddrinfo(machine, None, socket.AF_INET)[0][4][0]
    except (socket.gaierror, IndexError):
        raise ProviderError(
            f"cannot resolve the Docker engine's host {machine!r} to an IPv4 address: set "
            "publish_address (an address of the engine's machine that this machine can reach)"
        ) from None


def driver_address(host: str, published_on: str, configured: str | None) -> str:
    """Where the flow runner connects to the published port."""
    if configured:
        return configured
    if published_on in ("0.0.0.0", "::", ""):
        return engine_machine(host) or "127.0.0.1"
    return published_on
