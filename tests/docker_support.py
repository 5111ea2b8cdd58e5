"""Fixtures for tests that run clusters with DockerProvider on the real Docker engine.

    from containers import docker_engine, docker_tracker, test_images  # noqa: F401
    from docker_support import container_api, dev_worker_image  # noqa: F401

- `dev_worker_image` (session): the manifest's `worker` image (the project's Dockerfile, package
  baked in) with this checkout's `prefect_dockerparallel/` copied over the baked one, so the
  containers run the code under test also in a worktree whose code is newer than the image. Built
  in seconds (one COPY layer), cached by a hash of the sources.
- `container_api` (per test): the Prefect API URL switched to the session's Prefect server as
  reached through a relay on the Docker bridge's gateway address, which both this process and
  containers reach (the server itself listens on 127.0.0.1 only, which a container cannot reach).
- `docker_cluster_kwargs(tracker, image)`: runner/cluster arguments whose every Docker object
  carries the tracker's owner label, so `docker_tracker` removes exactly those.

Task code: worker images contain the package, not tests/. Test modules that send their own
functions call `ship_by_value(__name__)` (cloudpickle pickles the module's functions by value).
"""

from __future__ import annotations

import atexit
import datetime
import hashlib
import io
import ipaddress
import socket
import sys
import tarfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import cloudpickle
import pytest

from containers import OWNER_LABEL, image_of
from prefect_server import PrefectServer, shared_server

REPO = Path(__file__).resolve().parent.parent
DEV_IMAGE_REPO = "dp-test/worker-dev"
CREATED_BY = "tests/docker_support.py"
DEV_DOCKERFILE = """\
ARG BASE
FROM ${BASE}
COPY prefect_dockerparallel /tmp/dp-src/prefect_dockerparallel
RUN set -e; \\
    dest="$(cd / && python -c 'import os, prefect_dockerparallel as p; print(os.path.dirname(p.__file__))')"; \\
    rm -rf "$dest"; mv /tmp/dp-src/prefect_dockerparallel "$dest"; rm -rf /tmp/dp-src; \\
    cd / && python -c 'import prefect_dockerparallel.container.worker, prefect_dockerparallel.container.server'
"""


def ship_by_value(module_name: str) -> None:
    """Pickle the functions (tasks) of a test module by value: worker images lack tests/."""
    cloudpickle.register_pickle_by_value(sys.modules[module_name])


def _package_files() -> list[Path]:
    root = REPO / "prefect_dockerparallel"
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.fixture(scope="session")
def dev_worker_image(docker_engine: Any, test_images: dict) -> str:
    return build_dev_worker_image(docker_engine, image_of(test_images, "worker"))


def build_dev_worker_image(client: Any, base: str, replace: dict[str, bytes] | None = None) -> str:
    """`base` with this checkout's package inside (files of `replace`, by path relative to the
    repository, instead of the checkout's); cached by a hash of everything that goes in."""
    files = {str(p.relative_to(REPO)): p.read_bytes() for p in _package_files()}
    files.update(replace or {})
    digest = hashlib.sha256(client.images.get(base).id.encode() + DEV_DOCKERFILE.encode())
    for name, data in sorted(files.items()):
        digest.update(name.encode() + b"\0" + data)
    tag = f"{DEV_IMAGE_REPO}:{digest.hexdigest()[:16]}"
    try:
        client.images.get(tag)
        return tag
    except Exception:  # noqa: BLE001 - ImageNotFound: build it
        pass
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in {"Dockerfile": DEV_DOCKERFILE.encode(), **files}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    client.images.build(
        fileobj=context, custom_context=True, tag=tag, buildargs={"BASE": base}, rm=True, forcerm=True,
        labels={"dp-test.created-by": CREATED_BY}, timeout=600,
    )
    _prune_old_dev_images(client, keep=tag)
    return tag


def _prune_old_dev_images(client: Any, keep: str, older_than_s: float = 24 * 3600) -> None:
    """Dev images of earlier code, a day old (so none a running session still uses)."""

    now = datetime.datetime.now(datetime.timezone.utc)
    for image in client.images.list(filters={"label": f"dp-test.created-by={CREATED_BY}"}):
        if keep in image.tags:
            continue
        created = datetime.datetime.fromisoformat(image.attrs["Created"][:26].rstrip("Z") + "+00:00")
        if (now - created).total_seconds() > older_than_s:
            try:
                client.images.remove(image.id)
            except Exception:  # noqa: BLE001 - in use by someone's container: leave it
                pass


def bridge_gateway(client: Any) -> str:
    """The host's address on Docker's default bridge: reachable from the host and any container."""
    config = client.networks.get("bridge").attrs["IPAM"]["Config"]
    for entry in config:
        if entry.get("Gateway") and ":" not in entry["Gateway"]:
            return str(entry["Gateway"])
    # Some engines (docker.io 28 on a fresh machine) list only the subnet; Docker gives the
    # bridge's gateway the subnet's first host address.
    subnet = next(ipaddress.ip_network(c["Subnet"]) for c in config if ":" not in c.get("Subnet", ":"))
    return str(next(subnet.hosts()))


def pump(src: socket.socket, dst: socket.socket, seen: Callable[[bytes], None] | None = None) -> None:
    """Copy bytes from `src` to `dst` until either side closes (showing each chunk to `seen`),
    then close both: one direction of a relay."""
    try:
        while data := src.recv(65536):
            if seen is not None:
                seen(data)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


class TcpRelay:
    """Relays connections from `host:<free port>` to 127.0.0.1:`target_port`, byte for byte
    (HTTP and websockets alike), on daemon threads: the session's Prefect server listens on
    127.0.0.1, which containers cannot reach, and a second server would take a minute to start."""

    def __init__(self, host: str, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server((host, 0))
        self.address = self.listener.getsockname()[:2]
        threading.Thread(target=self._accept, name="dp-test-relay", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                inbound, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                outbound = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            except OSError:
                inbound.close()
                continue
            outbound.settimeout(None)
            for src, dst in ((inbound, outbound), (outbound, inbound)):
                threading.Thread(target=pump, args=(src, dst), daemon=True).start()

    def close(self) -> None:
        self.listener.close()


_relay: TcpRelay | None = None


def containers_prefect_api(client: Any) -> PrefectServer:
    """The session's Prefect server, at an address containers reach too (once per session)."""
    global _relay
    server = shared_server()
    port = int(server.api_url.rsplit(":", 1)[1].split("/")[0])
    if _relay is None:
        _relay = TcpRelay(bridge_gateway(client), port)
        atexit.register(_relay.close)
    host, relay_port = _relay.address
    return PrefectServer(api_url=f"http://{host}:{relay_port}/api", home=server.home, process=server.process)


@pytest.fixture
def container_api(docker_engine: Any) -> Iterator[PrefectServer]:
    """This test's Prefect API URL: the session server, through a relay that containers reach."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = containers_prefect_api(docker_engine)
    with temporary_settings({PREFECT_API_URL: server.api_url}):
        yield server


def docker_cluster_kwargs(tracker: Any, image: str, slots: int = 1, **extra: Any) -> dict[str, Any]:
    """DockerParallelTaskRunner / DockerCluster arguments for a test cluster on the engine."""
    from prefect_dockerparallel import DockerProvider, WorkerContainer

    return {
        "provider": DockerProvider(start_timeout=60),
        "container": WorkerContainer(image=image, install_self="", workers_per_container=slots),
        "tags": {OWNER_LABEL: tracker.owner},
        "worker_cpu": 1024,
        "worker_memory": 512,
        **extra,
    }


def cluster_objects(client: Any, cluster: str) -> dict[str, list[str]]:
    """Names of every container, network and volume labelled with `cluster` (none means clean)."""
    import docker.errors

    labels = {"label": f"dockerparallel-cluster={cluster}"}
    for _ in range(20):  # an object removed between the list and its inspect: look again
        try:
            return _objects(client, labels)
        except docker.errors.NotFound:
            continue
    return _objects(client, labels)


def _objects(client: Any, labels: dict) -> dict[str, list[str]]:
    return {
        "containers": [c.name for c in client.containers.list(all=True, filters=labels)],
        "networks": [n.name for n in client.networks.list(filters=labels)],
        "volumes": [v.name for v in client.volumes.list(filters=labels)],
    }
