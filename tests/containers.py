"""Helpers for tests that run real containers, through the Docker SDK for Python (`docker`).

Import the fixtures into a test module (tests/ is on sys.path, see conftest.py):

    from containers import docker_engine, docker_tracker, image_of, test_images

    FIXTURES = (docker_engine, docker_tracker, test_images)  # imported for pytest to find them

    def test_something(docker_tracker, test_images):
        out = docker_tracker.run(image_of(test_images, "python"), ["python", "-c", "print(1)"])

- `docker_engine` (session): a `docker.DockerClient` for the engine `DOCKER_HOST` / the local
  socket names. No engine: the test is skipped with "no Docker engine: run
  scripts/prepare_docker.py", except under `CI=true`, where it fails.
- `test_images` (session): the manifest scripts/prepare_docker.py wrote (env
  DOCKERPARALLEL_TEST_IMAGES, default /tmp/dp-docker-images.json): role -> {"image", "official",
  "stand_in", ...} for the roles debian, python, prefect, redis, worker, plus "engine". Use the
  roles, never stand-in names. Missing: skipped with the reason, a failure under `CI=true`.
- `docker_tracker` (per test): a `ContainerTracker` whose containers, networks and volumes carry
  the label `dp-test-owner=<uuid of this test>`; at teardown, pass or fail, it removes exactly
  the objects with that label (never anything by name) and fails the test if any is left.
  Code under test that creates objects itself should be given `tracker.labels`.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

MANIFEST_ENV = "DOCKERPARALLEL_TEST_IMAGES"
DEFAULT_MANIFEST = "/tmp/dp-docker-images.json"
OWNER_LABEL = "dp-test-owner"
TEST_LABEL = "dp-test-test"  # the test's node id, for humans reading `docker ps`
NO_ENGINE = "no Docker engine: run scripts/prepare_docker.py"
ROLES = ("debian", "python", "prefect", "redis", "worker")


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def unavailable(reason: str, detail: str = "") -> None:
    """Skip with `reason`; under CI=true, fail instead (CI must run the container tests)."""
    if under_ci():
        pytest.fail(f"{reason}{f' ({detail})' if detail else ''} [CI=true: container tests may not skip]",
                    pytrace=False)
    pytest.skip(reason)


def manifest_path() -> Path:
    return Path(os.environ.get(MANIFEST_ENV) or DEFAULT_MANIFEST)


def image_of(manifest: dict, role: str) -> str:
    """The image tag to use for a role of the manifest, with a clear error when it is missing."""
    entry = manifest.get(role)
    if not isinstance(entry, dict) or not entry.get("image"):
        unavailable(f"test image manifest {manifest_path()} has no {role!r} image: "
                    f"run scripts/prepare_docker.py --only {role}")
    return entry["image"]


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Any]:
    problem = ""
    try:
        import docker
    except ImportError as exc:
        docker = None
        problem = f"the Docker SDK for Python is not installed ({exc}): pip install -e '.[dev]'"
    if docker is not None:
        try:
            client = docker.from_env(timeout=120)
            client.ping()
        except Exception as exc:  # DockerException, connection errors, permission denied on the socket
            problem = f"{type(exc).__name__}: {exc}"
    if problem:  # outside the except blocks: no chained traceback in the report
        unavailable(NO_ENGINE, problem)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def test_images() -> dict:  # a fixture, never collected as a test (pytest skips fixture functions)
    path = manifest_path()
    problem = ""
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        problem = f"no test image manifest at {path}: run scripts/prepare_docker.py"
    except (OSError, ValueError) as exc:
        problem = f"unreadable test image manifest {path}: {exc}; rerun scripts/prepare_docker.py"
    if problem:
        unavailable(problem)
    return manifest


class ContainerTracker:
    """Creates containers, networks and volumes labelled `dp-test-owner=<owner>`; removes exactly those.

    Everything found by that label is removed at `cleanup()`, also objects that code under test
    created with `tracker.labels`. Usable as a context manager (cleans up on the way out, also
    when the block raised).
    """

    def __init__(self, client: Any, test_name: str = "") -> None:
        self.client = client
        self.owner = uuid.uuid4().hex
        self.labels = {OWNER_LABEL: self.owner}
        if test_name:
            self.labels[TEST_LABEL] = test_name[:200]
        self._names = 0

    # -- creating ------------------------------------------------------------------------

    def _with_labels(self, kwargs: dict) -> dict:
        labels = kwargs.pop("labels", None) or {}
        if isinstance(labels, list):  # the SDK also accepts a list of label names
            labels = {name: "" for name in labels}
        return {**kwargs, "labels": {**labels, **self.labels}}

    def name(self, prefix: str = "dp-test") -> str:
        """A unique object name for this test (names are for humans; cleanup never uses them)."""
        self._names += 1
        return f"{prefix}-{self.owner[:12]}-{self._names}"

    def run(self, image: str, command: Any = None, **kwargs: Any) -> Any:
        """`client.containers.run` with the owner label: the container's output (bytes) when it is
        run to completion, the Container with `detach=True`."""
        return self.client.containers.run(image, command, **self._with_labels(kwargs))

    def create(self, image: str, command: Any = None, **kwargs: Any) -> Any:
        """`client.containers.create` with the owner label (start it with `.start()`)."""
        return self.client.containers.create(image, command, **self._with_labels(kwargs))

    def network(self, name: str | None = None, **kwargs: Any) -> Any:
        return self.client.networks.create(name or self.name("dp-test-net"), **self._with_labels(kwargs))

    def volume(self, name: str | None = None, **kwargs: Any) -> Any:
        return self.client.volumes.create(name=name or self.name("dp-test-vol"), **self._with_labels(kwargs))

    # -- finding and removing ------------------------------------------------------------

    def _filters(self) -> dict:
        return {"label": f"{OWNER_LABEL}={self.owner}"}

    def leftovers(self) -> dict[str, list[str]]:
        """Names of this tracker's containers, networks and volumes that still exist."""
        return {
            "containers": [c.name for c in self.client.containers.list(all=True, filters=self._filters())],
            "networks": [n.name for n in self.client.networks.list(filters=self._filters())],
            "volumes": [v.name for v in self.client.volumes.list(filters=self._filters())],
        }

    def cleanup(self, timeout: float = 60.0) -> dict[str, list[str]]:
        """Remove this tracker's objects (containers first, then networks, then volumes).

        Returns what could not be removed within `timeout` (empty lists when all is gone).
        """
        import docker.errors

        deadline = time.monotonic() + timeout
        while True:
            for container in self.client.containers.list(all=True, filters=self._filters()):
                try:
                    container.remove(force=True, v=True)  # v: its anonymous volumes too
                except docker.errors.NotFound:
                    pass
                except docker.errors.APIError as exc:  # e.g. "removal already in progress"
                    if "already in progress" not in str(exc):
                        raise
            for network in self.client.networks.list(filters=self._filters()):
                try:
                    network.reload()
                    for attached in (network.attrs.get("Containers") or {}):
                        network.disconnect(attached, force=True)  # someone else's container joined it
                    network.remove()
                except docker.errors.NotFound:
                    pass
                except docker.errors.APIError:
                    pass  # still in use for a moment: retried below
            for volume in self.client.volumes.list(filters=self._filters()):
                try:
                    volume.remove(force=True)
                except docker.errors.NotFound:
                    pass
                except docker.errors.APIError:
                    pass  # still in use for a moment: retried below
            left = self.leftovers()
            if not any(left.values()) or time.monotonic() > deadline:
                return left
            time.sleep(0.2)

    def __enter__(self) -> "ContainerTracker":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.cleanup()


@pytest.fixture
def docker_tracker(docker_engine: Any, request: pytest.FixtureRequest) -> Iterator[ContainerTracker]:
    tracker = ContainerTracker(docker_engine, test_name=request.node.nodeid)
    try:
        yield tracker
    finally:
        left = tracker.cleanup()
        if any(left.values()):
            pytest.fail(f"could not remove this test's Docker objects ({OWNER_LABEL}={tracker.owner}): {left}",
                        pytrace=False)


def put_files(container: Any, files: dict[str, bytes], mode: int = 0o644) -> None:
    """Copy files (absolute path in the container -> content) into a created or running container.

    Works with a remote engine too (no bind mounts).
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size = len(data)
            info.mode = mode
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
    if not container.put_archive("/", buf.getvalue()):
        raise RuntimeError(f"could not copy {list(files)} into container {container.name}")
