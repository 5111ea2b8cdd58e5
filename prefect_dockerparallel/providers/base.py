"""The provider interface: how a cluster's Redis server and worker containers come to exist.

Providers know no Prefect and no blocks: they receive frozen specs (`specs.py`) and secrets, and
run the two container entrypoints (`specs.ENTRYPOINT_MODULES`: `container.server`, `container.worker`) with
the environment that `container_env` builds. Every resource they create carries
`spec.labels` so `clusters cleanup` can find leftovers.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

from ..protocol import keys as K
from ..specs import (
    ClusterRecord,
    ClusterSecrets,
    ClusterSpec,
    ContainerCounts,
    Endpoint,
    ServerHandle,
)

if TYPE_CHECKING:
    from .tls import ClusterTLS

REDIS_PORT = 6379


def server_env(
    spec: ClusterSpec, secrets: ClusterSecrets, port: int = REDIS_PORT, tls: "ClusterTLS | None" = None
) -> dict[str, str]:
    """Environment of the Redis server container (redis-server under the watchdog); with `tls`,
    the server listens on `port` with TLS only (its key is a secret variable, like the password)."""
    env = {
        K.ENV_CLUSTER: spec.name,
        K.ENV_REDIS_HOST: "127.0.0.1",
        K.ENV_REDIS_PORT: str(port),
        K.ENV_REDIS_PASSWORD: secrets.redis_password,
        K.ENV_IDLE_TIMEOUT: str(spec.idle_timeout),
    }
    if tls is not None:
        env.update({K.ENV_REDIS_TLS: "1", K.ENV_REDIS_CA: tls.ca_pem, K.ENV_REDIS_TLS_CERT: tls.cert_pem,
                    K.ENV_REDIS_TLS_KEY: tls.key_pem})
    return env


def worker_env(
    spec: ClusterSpec,
    secrets: ClusterSecrets,
    redis_at: Endpoint,
    tls: bool = False,
    ca_pem: str | None = None,
    tls_name: str | None = None,
) -> dict[str, str]:
    """Environment of a worker container; the container's own `env` comes first, ours wins."""
    env = dict(spec.container.env)
    env.update(
        {
            K.ENV_CLUSTER: spec.name,
            K.ENV_REDIS_HOST: redis_at.host,
            K.ENV_REDIS_PORT: str(redis_at.port),
            K.ENV_REDIS_PASSWORD: secrets.redis_password,
            K.ENV_SIGNING_KEY: secrets.signing_key.hex(),
            K.ENV_SLOTS: str(spec.container.workers_per_container),
            K.ENV_IDLE_TIMEOUT: str(spec.idle_timeout),
        }
    )
    if tls or ca_pem:
        env[K.ENV_REDIS_TLS] = "1"
    if ca_pem:
        env[K.ENV_REDIS_CA] = ca_pem
    if ca_pem and tls_name:
        env[K.ENV_REDIS_TLS_NAME] = tls_name
    if spec.container.ssh_public_key:
        env[K.ENV_SSH_PUBLIC_KEY] = spec.container.ssh_public_key
    return env


def redact(env: dict[str, str]) -> dict[str, str]:
    """Copy of an environment fit for a log line."""
    return {k: ("***" if k in K.SECRET_ENV_NAMES else v) for k, v in env.items()}


class ProviderError(RuntimeError):
    """A provider could not create or reach a resource; the message says what and why."""


class Provider(abc.ABC):
    """One cloud (or the local machine). Instances are cheap and hold no open cluster state
    beyond caches; everything needed to reconnect is found again by cluster name."""

    kind: str = "base"

    def validate(self, spec: ClusterSpec) -> None:
        """Raise ValueError naming the field and the fix, before anything is paid for."""

    @property
    def is_remote(self) -> bool:
        """True when workers run off this machine (they cannot reach a loopback API URL)."""
        return True

    @abc.abstractmethod
    def start_server(self, spec: ClusterSpec, secrets: ClusterSecrets) -> ServerHandle:
        """Start Redis (idempotent for the same cluster name) and wait until it accepts clients."""

    @abc.abstractmethod
    def stop_server(self, spec: ClusterSpec) -> None: ...

    @abc.abstractmethod
    def server_handle(self, spec: ClusterSpec) -> ServerHandle | None:
        """Where the running server is, or None when it is not running (reconnect, status)."""

    @abc.abstractmethod
    def set_worker_containers(
        self, spec: ClusterSpec, count: int, secrets: ClusterSecrets, server: ServerHandle
    ) -> None:
        """Converge the number of worker containers to `count` (start or stop some)."""

    @abc.abstractmethod
    def worker_containers(self, spec: ClusterSpec) -> ContainerCounts: ...

    def read_secrets(self, spec: ClusterSpec) -> ClusterSecrets | None:
        """Secrets of an existing cluster, for `reconnect`; None when they cannot be recovered."""
        return None

    def detached(self, spec: ClusterSpec) -> None:
        """The driver left a warm cluster running (its lease will stop it): a provider that
        tidies up after its driver (Docker's janitor) hands that job on. Default: nothing."""

    @abc.abstractmethod
    def stop(self, spec: ClusterSpec) -> None:
        """Remove every resource of the cluster (workers, server, per-run networking)."""

    def logs(self, spec: ClusterSpec, tail: int = 200) -> str:
        return ""

    def server_lost_reason(self, spec: ClusterSpec) -> str | None:
        """Why the server is gone for good (asked when Redis stops answering); None while it may
        still come back or the provider cannot tell."""
        return None

    def lost_worker_reason(self, spec: ClusterSpec, worker_id: str) -> str | None:
        """Why the container of a lost worker slot ended (e.g. out of memory), for the message of
        the task that was lost with it; None when the provider cannot tell."""
        return None

    def list_clusters(self) -> list[ClusterRecord]:
        return []

    def cleanup(self, cluster_name: str) -> list[str]:
        """Remove leftovers of a cluster found by tag; returns what was removed."""
        return []
