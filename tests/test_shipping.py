"""Zero-build workers without containers: archive format, the bootstrap against a real
redis-server (tampered archives refused before anything is written or imported), user-code
detection, exclusions and the size cap. The same in real containers: tests/test_docker_shipping.py."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Iterator

import pytest

from helpers import RedisServer
from prefect_dockerparallel.container import bootstrap as B
from prefect_dockerparallel.protocol import archives as A
from prefect_dockerparallel.protocol import keys as K
from prefect_dockerparallel.shipping import package as P
from prefect_dockerparallel.shipping import usercode as U
from prefect_dockerparallel.specs import ClusterSecrets, ContainerSpec, bootstrap_command, official_prefect_image

CLUSTER = "ship-test"


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer(password=ClusterSecrets.generate().redis_password) as server:
        yield server


def test_bootstrap_and_protocol_agree() -> None:
    keys = K.Keys(CLUSTER)
    assert B.manifest_key(CLUSTER) == keys.code_manifest and B.archive_key(CLUSTER, "ab") == keys.code("ab")
    assert (B.MANIFEST_MAGIC, B.ARCHIVE_MAGIC) == (A.MANIFEST_MAGIC, A.ARCHIVE_MAGIC)
    for name in ("cluster", "host", "port", "password", "tls", "key", "secrets_file", "idle", "shipped"):
        assert B.ENV[name] in vars(K).values(), name
    assert B.ENV["ca"] == getattr(K, "ENV_REDIS_CA", "DOCKERPARALLEL_REDIS_CA")
    key = os.urandom(32)
    assert B.open_signed(key, B.ARCHIVE_MAGIC, A.seal(key, A.ARCHIVE_MAGIC, b"zip"), "x") == b"zip"
    with pytest.raises(B.Refused, match="bad signature"):
        B.open_signed(os.urandom(32), B.ARCHIVE_MAGIC, A.seal(key, A.ARCHIVE_MAGIC, b"zip"), "x")


def test_worker_command_is_the_inline_bootstrap() -> None:
    script = ContainerSpec(pip_packages=("numpy",)).startup_script("worker")
    assert script.startswith("pip install -q -- 'numpy' && exec python -c ") and "prefect-dockerparallel" not in script
    assert len(bootstrap_command()) < 6000
    # the server keeps its own command (its stock-Redis version is another change)
    assert "container.server" in ContainerSpec().startup_script("server")
    old = ContainerSpec(ship_package=False).startup_script("worker")
    assert old.endswith("exec python -m prefect_dockerparallel.container.worker")


def test_default_image_is_the_official_one_for_these_versions() -> None:
    from prefect.utilities.dockerutils import get_prefect_image_name

    assert official_prefect_image() == get_prefect_image_name() == ContainerSpec().image
    assert official_prefect_image("3.9.1+g1234", "3.12") == "prefecthq/prefect:3.9.1-python3.12"


def test_package_archive_is_deterministic_and_has_the_tree_digest() -> None:
    archive = P.package_archive()
    root = Path(B.installed_tree(B.PACKAGE) or "")
    assert dict(archive.meta)["tree"] == B.tree_digest(str(root))
    assert P.zip_files(P.tree_files(root, B.PACKAGE)) == archive.data
    assert 50_000 < len(archive.data) < 2_000_000


def test_stock_prefect_brings_redis_and_cloudpickle() -> None:
    """prefect -> pydocket -> redis, prefect -> cloudpickle: nothing extra to ship today."""
    assert {"redis", "cloudpickle", "pydocket"} <= P.prefect_closure()
    assert P.missing_from_prefect() == {}
    assert P.missing_from_prefect({"redis": "redis", "no-such-dist": "nosuch"}) == {"no-such-dist": "nosuch"}
    dep = P.dependency_archive("redis", "redis")
    assert dep is not None and dict(dep.meta)["module"] == "redis"


def _project(tmp_path: Path) -> Path:
    project = tmp_path / "proj"
    (project / "pkg" / "sub").mkdir(parents=True, exist_ok=True)
    (project / "helpers.py").write_text("def double(x):\n    return 2 * x\n")
    (project / "pkg" / "__init__.py").write_text("")
    (project / "pkg" / "sub" / "m.py").write_text("X = 1\n")
    (project / "pkg" / "__pycache__").mkdir(exist_ok=True)
    (project / "pkg" / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"junk")
    (project / "pkg" / ".venv").mkdir(exist_ok=True)
    (project / "pkg" / ".venv" / "pyvenv.cfg").write_text("")
    (project / "pkg" / "data.bin").write_bytes(b"x" * 1000)
    return project


def _modules(project: Path) -> dict[str, types.ModuleType]:
    helpers = types.ModuleType("helpers")
    helpers.__file__ = str(project / "helpers.py")
    pkg = types.ModuleType("pkg")
    pkg.__file__ = str(project / "pkg" / "__init__.py")
    pkg.__path__ = [str(project / "pkg")]
    return {"helpers": helpers, "pkg": pkg, "pkg.sub": pkg, "os": os, "pytest": pytest, "json": sys.modules["json"]}


def test_detects_the_users_modules_and_applies_the_exclusions(tmp_path: Path) -> None:
    project = _project(tmp_path)
    units = U.detect(_modules(project))
    assert [u.name for u in units] == ["helpers.py", "pkg"]
    files = U.collect(units, 10**6)
    assert sorted(files) == ["helpers.py", "pkg/__init__.py", "pkg/data.bin", "pkg/sub/m.py"]
    assert U.detect() and all(u.name not in ("prefect", "pytest", "os", B.PACKAGE) for u in U.detect())


def test_gitignored_files_stay_home(tmp_path: Path) -> None:
    project = _project(tmp_path)
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    (project / ".gitignore").write_text("*.bin\n")
    units = U.detect(_modules(project))
    assert "pkg/data.bin" not in U.collect(units, 10**6)


def test_size_cap_names_the_largest_files_and_the_setting(tmp_path: Path) -> None:
    project = _project(tmp_path)
    (project / "pkg" / "huge.csv").write_bytes(b"0" * 3 * 2**20)
    with pytest.raises(U.CodeTooLarge) as info:
        U.collect(U.detect(_modules(project)), 2**20)
    assert "huge.csv (3.0 MB)" in str(info.value) and "max_code_mb" in str(info.value)


def test_code_archive_is_cached_until_a_file_changes(tmp_path: Path) -> None:
    project = _project(tmp_path)
    units = U.detect(_modules(project))
    first = U.code_archive(units, 10**6)
    assert U.code_archive(units, 10**6) is first
    (project / "helpers.py").write_text("def double(x):\n    return x + x\n")
    assert U.code_archive(units, 10**6).digest != first.digest


def _publish(server: RedisServer, key: bytes, tmp_path: Path) -> A.Shipment:
    units = U.detect(_modules(_project(tmp_path)))
    return A.publish(server.client(), CLUSTER, key, P.package_archive(), [], U.code_archive(units, 10**6))


def _run_bootstrap(server: RedisServer, key: bytes, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {
        "PATH": os.environ["PATH"],
        "TMPDIR": str(tmp_path),
        K.ENV_CLUSTER: CLUSTER,
        K.ENV_REDIS_HOST: "127.0.0.1",
        K.ENV_REDIS_PORT: str(server.port),
        K.ENV_REDIS_PASSWORD: server.password,
        K.ENV_SIGNING_KEY: key.hex(),
        K.ENV_IDLE_TIMEOUT: "5",
    }
    command = bootstrap_command().replace("exec python ", f"exec {sys.executable} -I ", 1)
    return subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)


def test_publish_uploads_each_archive_once(redis_server: RedisServer, tmp_path: Path) -> None:
    key = os.urandom(32)
    first = _publish(redis_server, key, tmp_path)
    assert set(first.uploaded) == {B.PACKAGE, "user-code"} and not first.present
    again = _publish(redis_server, key, tmp_path)
    assert again.bytes_uploaded == 0 and set(again.present) == {B.PACKAGE, "user-code"}


def test_tampered_archive_is_refused_before_anything_is_written(redis_server: RedisServer, tmp_path: Path) -> None:
    key = os.urandom(32)
    shipment = _publish(redis_server, key, tmp_path)
    name = K.Keys(CLUSTER).code(shipment.manifest["code"]["digest"])
    client = redis_server.client()
    value = client.get(name)
    client.set(name, value[:-10] + b"x" * 10)  # a payload changed by someone with the password
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    out = _run_bootstrap(redis_server, key, run_dir)
    assert out.returncode == B.EXIT_REFUSED, out.stderr
    assert "refused: archive user-code has a bad signature" in out.stderr and "nothing was imported" in out.stderr
    assert not any(p.name.startswith("dp-ship-") and any(p.iterdir()) for p in run_dir.iterdir())


def test_manifest_signed_by_another_key_is_refused(redis_server: RedisServer, tmp_path: Path) -> None:
    _publish(redis_server, os.urandom(32), tmp_path)
    out = _run_bootstrap(redis_server, os.urandom(32), tmp_path)
    assert out.returncode == B.EXIT_REFUSED and "the manifest has a bad signature" in out.stderr


def test_bootstrap_needs_only_the_standard_library(tmp_path: Path) -> None:
    """No site-packages at all (-S): the bootstrap's source still runs up to its main()."""
    source = (Path(B.__file__)).read_text()
    probe = source.replace('if __name__ == "__main__":', "if False:") + "\nprint('ok', 'prefect' in sys.modules)"
    out = subprocess.run([sys.executable, "-I", "-S", "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.split() == ["ok", "False"], out.stderr


def test_no_manifest_starts_the_images_package(redis_server: RedisServer, tmp_path: Path) -> None:
    """A driver that ships nothing (a provider driven directly): the image's package runs."""
    out = _run_bootstrap(redis_server, os.urandom(32), tmp_path)
    assert "no manifest in Redis (the driver ships nothing)" in out.stderr and "starting the worker" in out.stderr


def test_a_flow_file_prefect_loaded_by_path_ships_as_one_module(tmp_path: Path) -> None:
    """Deployments: Prefect loads `flow.py` as module `flow` with a __path__ of its folder and the
    working directory; it is one file, not a package holding both folders."""
    project = _project(tmp_path)
    (project / "flow.py").write_text("X = 1\n")
    flow_module = types.ModuleType("flow")
    flow_module.__file__ = str(project / "flow.py")
    flow_module.__path__ = [str(project), str(tmp_path)]
    assert U.detect({"flow": flow_module}) == [U.Unit("flow.py", project / "flow.py")]


class _RemoteStub:
    """Just enough of a remote provider for a DockerCluster to name itself."""

    kind = "stub"
    is_remote = True

    def validate(self, spec) -> None:  # noqa: ANN001
        pass


def test_a_warm_cluster_name_changes_with_the_code_its_workers_run(tmp_path: Path) -> None:
    from prefect_dockerparallel.cluster import DockerCluster
    from prefect_dockerparallel.providers.base import Provider

    stub = type("Stub", (_RemoteStub, Provider), {n: lambda *a, **k: None for n in Provider.__abstractmethods__})()
    helper = tmp_path / "helper_mod.py"
    helper.write_text("X = 1\n")
    container = ContainerSpec(image="img", code_paths=(str(helper),), ship_code=False)

    def name() -> str:
        return DockerCluster(provider=stub, container=container, workers=1, keep_alive=60).name

    first = name()
    assert name() == first
    helper.write_text("X = 2\n")
    assert name() != first
