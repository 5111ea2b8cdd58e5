"""Creating a cluster's objects on the engine: images, the bridge network, containers.

Split from driver.py (which decides *what* should exist) because these steps are about *how*
the engine is asked: pull policies, the secrets file copied into a container before it starts
(never in its environment), and removing a half-created container when a step fails.
"""

from __future__ import annotations

import io
import logging
import tarfile
from pathlib import Path
from typing import Any

from ..base import ProviderError
from ...specs import ClusterSpec
from . import objects as O
from .engine import docker_sdk

log = logging.getLogger(__name__)


def create_container(client: Any, config: dict[str, Any], files: dict[str, bytes], engine_host: str) -> Any:
    """Create a container, copy `files` (name -> bytes, 0600 in SECRETS_DIR) in, start it;
    remove it if any step fails."""
    errors = docker_sdk().errors
    try:
        container = client.containers.create(**config)
    except errors.ImageNotFound:
        raise ProviderError(f"image {config['image']!r} is not on the engine {engine_host}") from None
    except errors.APIError as exc:
        raise ProviderError(f"could not create container {config['name']}: {exc.explanation or exc}") from None
    try:
        uid, gid = image_user_ids(container)
        archive = O.secrets_archive(files, uid, gid)
        if not container.put_archive("/", archive):
            raise ProviderError(f"could not copy the secrets file into container {config['name']}")
        container.start()
    except BaseException as exc:
        try:
            container.remove(force=True)
        except errors.APIError:
            pass
        if isinstance(exc, errors.APIError):
            raise ProviderError(f"could not start container {config['name']}: {exc.explanation or exc}") from None
        raise
    return container


def secrets_files(secrets_json: bytes) -> dict[str, bytes]:
    """The files of a container's 0600 secrets folder for one secrets JSON document."""
    return {Path(O.SECRETS_PATH).name: secrets_json}


def image_user_ids(container: Any) -> tuple[int, int]:
    """uid/gid of the image's user, who must be able to read the 0600 secrets file."""
    user = container.attrs["Config"].get("User") or ""
    name = user.partition(":")[0]
    if not name or name == "root" or name.isdigit():
        return O.owner_ids(user)
    try:
        stream, _ = container.get_archive("/etc/passwd")
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.extractfile("passwd")
            return O.owner_ids(user, member.read().decode(errors="replace") if member else "")
    except (docker_sdk().errors.APIError, tarfile.TarError, KeyError):
        return 0, 0


def ensure_network(client: Any, spec: ClusterSpec) -> bool:
    """The cluster's bridge network; True when this call created it."""
    name = O.network_name(spec)
    for net in client.api.networks(names=[name]):
        if net["Name"] == name:
            if (net.get("Labels") or {}).get(O.CLUSTER_LABEL) != spec.name:
                raise ProviderError(f"a Docker network named {name} exists and is not cluster {spec.name}'s")
            return False
    client.api.create_network(name, driver="bridge", labels=O.labels(spec, "network"), check_duplicate=True)
    return True


def ensure_image(client: Any, image: str, pull: str, engine_host: str) -> None:
    """Make `image` present on the engine under the pull policy ("missing", "always", "never")."""
    errors = docker_sdk().errors
    if pull != "always":
        try:
            client.api.inspect_image(image)
            return
        except errors.ImageNotFound:
            if pull == "never":
                raise ProviderError(
                    f"image {image!r} is not on the Docker engine {engine_host} and pull='never': "
                    "build or load it there (docker build / docker load), or allow pulls"
                ) from None
    repository, tag = docker_sdk().utils.parse_repository_tag(image)
    log.info("pulling image %s on %s", image, engine_host)
    try:
        client.images.pull(repository, tag=tag or "latest")
    except errors.APIError as exc:
        raise ProviderError(f"could not pull image {image!r} on {engine_host}: {exc.explanation or exc}") from None
