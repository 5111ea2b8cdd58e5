"""A cluster's objects on a Docker engine, as plain values (no docker import: testable alone).

Cluster `x`:

    network    dp-x            user-defined bridge: workers reach the server by its name
    container  dp-x-server     redis-server under the watchdog; port 6379 published on one
                               driver-reachable address only (127.0.0.1 for a local engine)
    container  dp-x-w-<hex6>   a worker container (workers_per_container slots)

Every object carries the labels of `labels()` (cluster name, flow run id, role, provider, the
cluster's tags) so `clusters ls|cleanup` and the janitor find them. No secret is in an object's
configuration, which `docker inspect` shows: the Redis password and signing key are copied into
each created container as a 0600 file before it starts (`secrets_archive`), and the entrypoints
read it (`container.secrets_file`). Server and worker containers are each described in one place
(`server_container`, `worker_container`).
"""

from __future__ import annotations

import io
import json
import tarfile
from typing import Any

from ...protocol import keys as K
from ...specs import ClusterSecrets, ClusterSpec, ContainerSpec

CLUSTER_LABEL = "dockerparallel-cluster"
FLOW_RUN_LABEL = "dockerparallel-flow-run"
ROLE_LABEL = "dockerparallel-role"
PROVIDER_LABEL = "dockerparallel-provider"
CA_LABEL = "dockerparallel-redis-ca"  # the cluster CA (PEM, public): how a reconnecting driver verifies
PROVIDER = "docker"
REDIS_PORT = 6379
SECRETS_DIR = "/run/dockerparallel"
SECRETS_PATH = f"{SECRETS_DIR}/secrets.json"
MIN_MEMORY_MB = 6  # Docker refuses smaller memory limits


def network_name(spec: ClusterSpec) -> str:
    return f"dp-{spec.name}"


def server_name(spec: ClusterSpec) -> str:
    return f"dp-{spec.name}-server"


def worker_name(spec: ClusterSpec, suffix: str) -> str:
    return f"dp-{spec.name}-w-{suffix}"


def worker_hostname(spec: ClusterSpec, suffix: str) -> str:
    """At most 40 characters and unique: worker ids begin with the first 40 of the hostname."""
    return f"dp-{spec.name}"[:31] + f"-w-{suffix}"


def suffix_of_worker_id(worker_id: str) -> str | None:
    """The container suffix from a worker id (`<hostname>-<pid or slot>-<hex>`), if it has one."""
    host = worker_id.rsplit("-", 2)[0]
    head, sep, suffix = host.rpartition("-w-")
    return suffix if sep and head else None


def labels(spec: ClusterSpec, role: str) -> dict[str, str]:
    return {**spec.labels, ROLE_LABEL: role, PROVIDER_LABEL: PROVIDER}


def selector(cluster: str | None = None, role: str | None = None) -> dict[str, list[str]]:
    """`filters=` of the engine's list calls: this provider's objects (of one cluster / role)."""
    wanted = [f"{PROVIDER_LABEL}={PROVIDER}", f"{CLUSTER_LABEL}={cluster}" if cluster else CLUSTER_LABEL]
    if role:
        wanted.append(f"{ROLE_LABEL}={role}")
    return {"label": wanted}


def cpus(cpu_units: int) -> float:
    """CPU units (1024 = 1 vCPU, the seed's and Fargate's unit) as a number of CPUs."""
    return cpu_units / 1024


def limits(cpu_units: int, memory_mb: int) -> dict[str, Any]:
    """Real limits: a CFS quota of `cpu_units` and a memory limit with no swap on top."""
    memory = memory_mb * 2**20
    return {"nano_cpus": int(cpus(cpu_units) * 1e9), "mem_limit": memory, "memswap_limit": memory}


def split_secrets(env: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(what may be shown in `docker inspect`, what goes into the secrets file)."""
    public = {k: v for k, v in env.items() if k not in K.SECRET_ENV_NAMES}
    hidden = {k: v for k, v in env.items() if k in K.SECRET_ENV_NAMES}
    public[K.ENV_SECRETS_FILE] = SECRETS_PATH
    return public, hidden


def secrets_json(secrets: ClusterSecrets, with_signing_key: bool = True, extra: dict[str, str] | None = None) -> bytes:
    """The 0600 secrets file's content; `extra`: further secret variables (the server's TLS key)."""
    data = {**(extra or {}), K.ENV_REDIS_PASSWORD: secrets.redis_password}
    if with_signing_key:
        data[K.ENV_SIGNING_KEY] = secrets.signing_key.hex()
    return json.dumps(data).encode()


def secrets_from_json(raw: bytes) -> ClusterSecrets | None:
    try:
        data = json.loads(raw)
        return ClusterSecrets(data[K.ENV_REDIS_PASSWORD], bytes.fromhex(data[K.ENV_SIGNING_KEY]))
    except (ValueError, KeyError, TypeError):
        return None


def secrets_archive(files: dict[str, bytes], uid: int = 0, gid: int = 0) -> bytes:
    """A tar for `put_archive("/", ...)`: SECRETS_DIR (0700) holding `files` (name -> bytes, 0600),
    owned by the container's user. The same way can deliver any file (a redis.conf, a CA)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        folder = tarfile.TarInfo(SECRETS_DIR.lstrip("/"))
        folder.type, folder.mode, folder.uid, folder.gid = tarfile.DIRTYPE, 0o700, uid, gid
        tar.addfile(folder)
        for name, data in files.items():
            info = tarfile.TarInfo(f"{SECRETS_DIR.lstrip('/')}/{name}")
            info.size, info.mode, info.uid, info.gid = len(data), 0o600, uid, gid
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def owner_ids(user: str, passwd: str = "") -> tuple[int, int]:
    """uid/gid of an image's `USER` (numeric, or a name looked up in the image's /etc/passwd)."""
    name, _, group = (user or "").partition(":")
    if not name or name == "root":
        return 0, 0
    if name.isdigit():
        return int(name), int(group) if group.isdigit() else int(name)
    for line in passwd.splitlines():
        fields = line.split(":")
        if len(fields) > 3 and fields[0] == name:
            return int(fields[2]), int(group) if group.isdigit() else int(fields[3])
    return 0, 0


def _command(container: ContainerSpec, entrypoint: str) -> list[str]:
    return ["sh", "-c", container.startup_script(entrypoint)]


def server_container(
    spec: ClusterSpec, env: dict[str, str], publish_address: str, ca_pem: str | None = None
) -> dict[str, Any]:
    """`containers.create` arguments of the server; it reuses the worker image (one pull) unless
    the container names a `server_image`."""
    server = ContainerSpec(image=spec.container.server_image or spec.container.image, install_self=spec.container.install_self)
    return {
        "image": server.image,
        "command": _command(server, "server"),
        "name": server_name(spec),
        "hostname": server_name(spec)[:63],
        "labels": {**labels(spec, "server"), **({CA_LABEL: ca_pem} if ca_pem else {})},
        "environment": env,
        "network": network_name(spec),
        "ports": {f"{REDIS_PORT}/tcp": (publish_address, None)},  # a free port, one address only
        "init": True,  # tini as PID 1: signals reach the entrypoint, zombies are reaped
        **limits(spec.server_cpu, spec.server_memory),
    }


def worker_container(spec: ClusterSpec, env: dict[str, str], suffix: str) -> dict[str, Any]:
    """`containers.create` arguments of one worker container (no published port)."""
    slots = spec.container.workers_per_container
    return {
        "image": spec.container.image,
        "command": _command(spec.container, "worker"),
        "name": worker_name(spec, suffix),
        "hostname": worker_hostname(spec, suffix),
        "labels": labels(spec, "worker"),
        "environment": env,
        "network": network_name(spec),
        "init": True,
        **limits(spec.worker_cpu * slots, spec.worker_memory * slots),
    }
