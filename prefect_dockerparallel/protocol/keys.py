"""Every Redis key, TTL and environment variable of the protocol, in one place.

All keys of a cluster share the prefix `dp:{name}:` so one SCAN finds (and deletes) them all.
"""

from __future__ import annotations

from dataclasses import dataclass

# Liveness timings (seconds). A worker refreshes its lease every HEARTBEAT_INTERVAL; the lease
# lives WORKER_LEASE_TTL, so a SIGKILLed worker's tasks are re-queued within about that time.
HEARTBEAT_INTERVAL = 1.0
WORKER_LEASE_TTL = 10
BLOCKING_POP_TIMEOUT = 1.0  # how long a claim blocks before the worker re-checks liveness
# Pushed onto the task list at teardown, one per joined slot: a slot blocked in its claim wakes
# at once, flushes its Prefect events and exits instead of noticing the stop flag up to 2 s later.
STOP_SENTINEL = b"dp-stop"
BLOB_TTL = 24 * 3600  # content-addressed blobs outlive a cluster only if teardown failed

# Environment contract between the driver/provider and a container entrypoint.
ENV_CLUSTER = "DOCKERPARALLEL_CLUSTER"
ENV_REDIS_HOST = "DOCKERPARALLEL_REDIS_HOST"
ENV_REDIS_PORT = "DOCKERPARALLEL_REDIS_PORT"
ENV_REDIS_PASSWORD = "DOCKERPARALLEL_REDIS_PASSWORD"
ENV_REDIS_TLS = "DOCKERPARALLEL_REDIS_TLS"
# The cluster CA certificate in PEM (public, not a secret): clients verify the server against it
# with hostname checking on (redis-py `ssl_ca_data`, stdlib `ssl.create_default_context(cadata=)`).
ENV_REDIS_CA = "DOCKERPARALLEL_REDIS_CA"
# Optional: the name the server certificate is checked for when it differs from the host dialled
# (ECS: the task's IP is known only after start, the certificate is made before). Stdlib clients:
# `context.wrap_socket(sock, server_hostname=os.environ.get(ENV_REDIS_TLS_NAME) or host)`.
ENV_REDIS_TLS_NAME = "DOCKERPARALLEL_REDIS_TLS_NAME"
# The server container's own certificate (PEM, public) and private key (PEM, secret).
ENV_REDIS_TLS_CERT = "DOCKERPARALLEL_REDIS_TLS_CERT"
ENV_REDIS_TLS_KEY = "DOCKERPARALLEL_REDIS_TLS_KEY"
ENV_SIGNING_KEY = "DOCKERPARALLEL_CLUSTER_SECRET"
ENV_SLOTS = "DOCKERPARALLEL_SLOTS"
ENV_IDLE_TIMEOUT = "DOCKERPARALLEL_IDLE_TIMEOUT"
ENV_WORKER_ID = "DOCKERPARALLEL_WORKER_ID"
ENV_SSH_PUBLIC_KEY = "DOCKERPARALLEL_SSH_PUBLIC_KEY"
# Set by the bootstrap for the worker: which archives it fetched from Redis ("none": the image had them).
ENV_SHIPPED = "DOCKERPARALLEL_SHIPPED"
# A 0600 JSON file of secret variables (container.secrets_file), for engines whose API would show
# the environment (`docker inspect`): the entrypoints load it into their own environment first.
ENV_SECRETS_FILE = "DOCKERPARALLEL_SECRETS_FILE"
SECRET_ENV_NAMES = frozenset({ENV_REDIS_PASSWORD, ENV_SIGNING_KEY, ENV_REDIS_TLS_KEY})


@dataclass(frozen=True)
class Keys:
    """Key names of one cluster."""

    cluster: str

    @property
    def prefix(self) -> str:
        return f"dp:{self.cluster}:"

    @property
    def pattern(self) -> str:
        return f"dp:{self.cluster}:*"

    @property
    def tasks(self) -> str:
        """List of pending task envelopes (LPUSH in, BLMOVE out from the right)."""
        return self.prefix + "tasks"

    def processing(self, worker_id: str) -> str:
        """Per-worker list holding the envelopes a worker has claimed but not acked."""
        return self.prefix + "processing:" + worker_id

    def lease(self, worker_id: str) -> str:
        """Heartbeat key with TTL: while it exists the worker owns its processing list."""
        return self.prefix + "lease:" + worker_id

    @property
    def workers(self) -> str:
        """Set of worker ids that ever joined (the reaper scans it)."""
        return self.prefix + "workers"

    @property
    def attempts(self) -> str:
        """Hash task_id -> number of times the task was claimed."""
        return self.prefix + "attempts"

    @property
    def acked(self) -> str:
        """Set of envelope ids acked in this cluster (expires with the envelopes): replays refused."""
        return self.prefix + "acked"

    @property
    def deadletter(self) -> str:
        """Bounded trace (last 100) of elements put aside: oversized, undecodable, un-ackable."""
        return self.prefix + "deadletter"

    @property
    def stats(self) -> str:
        """Hash of counters (`dead_lettered`) the driver reports."""
        return self.prefix + "stats"

    def results(self, listener: str) -> str:
        """List of signed result envelopes for one listener (the driver, or a nested runner)."""
        return self.prefix + "results:" + listener

    @property
    def driver(self) -> str:
        """Driver heartbeat (dead-man's switch): workers and server exit when it is gone."""
        return self.prefix + "driver"

    @property
    def meta(self) -> str:
        """Hash of the driver's versions, checked by every joining worker."""
        return self.prefix + "meta"

    @property
    def errors(self) -> str:
        """List of worker-level errors (version mismatch, bad signature) for the driver to log."""
        return self.prefix + "errors"

    @property
    def stopping(self) -> str:
        """Set while the cluster tears down: workers exit at once."""
        return self.prefix + "stopping"

    @property
    def retire(self) -> str:
        """Counter of worker slots asked to exit (scale-down without killing busy workers)."""
        return self.prefix + "retire"

    def blob(self, digest: str) -> str:
        """Content-addressed payload part (large arguments, task objects, contexts)."""
        return self.prefix + "blob:" + digest

    def code(self, digest: str) -> str:
        """Signed zip of code for the workers' bootstrap (the package, a dependency, user code)."""
        return self.prefix + "code:" + digest

    @property
    def code_manifest(self) -> str:
        """Signed list of the code archives a joining worker fetches (`protocol/archives.py`)."""
        return self.prefix + "code-manifest"


def make_ident(kind: str, task_id: str, listener: str) -> str:
    """Envelope id: says where the result goes even when only the reaper can read it."""
    return f"{kind}:{task_id}@{listener}"


def split_ident(ident: str) -> tuple[str, str, str]:
    """(kind, task_id, listener) of an envelope id."""
    kind, _, rest = ident.partition(":")
    task_id, _, listener = rest.partition("@")
    return kind, task_id, listener
