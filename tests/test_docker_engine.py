"""The Docker engine and the test images that scripts/prepare_docker.py prepares, in real containers.

Skipped without an engine or image manifest (a laptop without Docker); a failure under CI=true.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import ipaddress
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from containers import (
    OWNER_LABEL,
    ContainerTracker,
    docker_engine,
    docker_tracker,
    image_of,
    put_files,
    test_images,
)

FIXTURES = (docker_engine, docker_tracker, test_images)  # imported for pytest to find them

REPO = Path(__file__).resolve().parent.parent
DRIVER_PY = f"{sys.version_info.major}.{sys.version_info.minor}"
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
HAS_CONTAINER_PACKAGE = (REPO / "prefect_dockerparallel" / "container" / "worker.py").exists()


def test_python_image_runs_python(docker_tracker, test_images):
    out = docker_tracker.run(
        image_of(test_images, "python"),
        ["python", "-c", "import sys; print('hello from', '%d.%d' % sys.version_info[:2])"],
        network_disabled=True,
    )
    # the driver's major.minor: cloudpickle payloads and the worker's version check depend on it
    assert out.decode().strip() == f"hello from {DRIVER_PY}"


def test_images_trust_the_hosts_extra_ca_certificates(docker_tracker, test_images):
    """pip in containers goes through a TLS-intercepting proxy here: stand-ins must trust its CA."""
    host_pems = {p.name: p.read_text().strip() for p in sorted(HOST_CA_DIR.rglob("*.crt"))} if HOST_CA_DIR.is_dir() else {}
    if not host_pems:
        pytest.skip(f"this host has no extra CA certificates in {HOST_CA_DIR}")
    for role in ("python", "worker"):
        if not test_images.get(role, {}).get("stand_in"):
            continue  # an official image pulled on a machine with internet: nothing of ours inside
        bundle = docker_tracker.run(
            image_of(test_images, role), ["sh", "-c", 'cat "$PIP_CERT"'], network_disabled=True
        ).decode()
        body = lambda pem: "".join(pem.split("-----")[2].split())  # noqa: E731
        flat = "".join(bundle.split())
        missing = [name for name, pem in host_pems.items() if body(pem) not in flat]
        assert not missing, f"{role} image does not trust the host CA certificates {missing}"


@pytest.mark.xfail(
    not HAS_CONTAINER_PACKAGE, strict=False,
    reason="prefect_dockerparallel/container/ (the new entrypoint modules) is not in the tree yet",
)
def test_worker_image_has_the_package_and_the_drivers_versions(docker_tracker, test_images):
    out = docker_tracker.run(
        image_of(test_images, "worker"),
        ["python", "-c",
         "import prefect_dockerparallel.container.worker, prefect_dockerparallel.container.server, "
         "prefect, cloudpickle, shutil, sys; "
         "print(prefect.__version__, cloudpickle.__version__, '%d.%d' % sys.version_info[:2], "
         "bool(shutil.which('redis-server')))"],
        network_disabled=True,
    )
    expected = (f"{importlib.metadata.version('prefect')} {importlib.metadata.version('cloudpickle')} "
                f"{DRIVER_PY} True")
    assert out.decode().strip().splitlines()[-1] == expected


def _self_signed_cert() -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def test_redis_image_serves_tls(docker_tracker, test_images):
    image = image_of(test_images, "redis")
    version = docker_tracker.run(image, ["redis-server", "--version"], network_disabled=True).decode()
    assert version.startswith("Redis server v=7."), version
    if test_images["redis"].get("stand_in"):  # the stand-in is Debian's redis-server without Python
        no_python = docker_tracker.run(image, ["sh", "-c", "command -v python3 python || echo none"],
                                       network_disabled=True).decode().strip()
        assert no_python == "none"
    cert, key = _self_signed_cert()
    container = docker_tracker.create(
        image,
        ["redis-server", "--port", "0", "--tls-port", "6380", "--tls-cert-file", "/tls/server.crt",
         "--tls-key-file", "/tls/server.key", "--tls-ca-cert-file", "/tls/server.crt", "--tls-auth-clients", "no"],
        network_disabled=True,
    )
    put_files(container, {"/tls/server.crt": cert, "/tls/server.key": key})
    container.start()
    deadline = time.monotonic() + 30
    while True:
        container.reload()
        assert container.status == "running", container.logs().decode()[-2000:]
        rc, out = container.exec_run(["redis-cli", "--tls", "--cacert", "/tls/server.crt", "-p", "6380", "ping"])
        if rc == 0 and out.strip() == b"PONG":
            break
        assert time.monotonic() < deadline, f"no TLS PONG within 30 s: {rc} {out!r}\n{container.logs().decode()}"
        time.sleep(0.2)
    # and the plain-text port really is off: TLS only
    rc, out = container.exec_run(["redis-cli", "-p", "6379", "ping"])
    assert b"PONG" not in out


def test_tracker_removes_exactly_its_own_objects(docker_engine, test_images):
    image = image_of(test_images, "debian")
    bystander = ContainerTracker(docker_engine, test_name="bystander")
    mine = ContainerTracker(docker_engine, test_name="mine")
    try:
        other = bystander.run(image, ["sleep", "60"], detach=True, network_disabled=True)
        other_net = bystander.network()
        net = mine.network()
        vol = mine.volume()
        mine.run(image, ["sleep", "60"], detach=True, network=net.name,
                 volumes={vol.name: {"bind": "/data", "mode": "rw"}})
        mine.run(image, ["true"], detach=True, network_disabled=True)  # exits at once, still tracked
        mine.create(image, ["true"], network_disabled=True)  # never started
        left = mine.leftovers()
        assert len(left["containers"]) == 3 and left["networks"] == [net.name] and left["volumes"] == [vol.name]

        assert mine.cleanup() == {"containers": [], "networks": [], "volumes": []}
        # nothing of ours is left, by label, and nothing of the bystander's was touched
        flt = {"label": f"{OWNER_LABEL}={mine.owner}"}
        assert not docker_engine.containers.list(all=True, filters=flt)
        assert not docker_engine.networks.list(filters=flt)
        assert not docker_engine.volumes.list(filters=flt)
        other.reload()
        assert other.status == "running"
        assert docker_engine.networks.get(other_net.id).name == other_net.name
    finally:
        mine.cleanup()
        assert bystander.cleanup() == {"containers": [], "networks": [], "volumes": []}


def test_tracker_cleans_up_when_the_test_fails(docker_engine, test_images, tmp_path):
    """A failing test that uses the `docker_tracker` fixture leaves nothing behind."""
    image = image_of(test_images, "debian")
    owner_file = tmp_path / "owner"
    (tmp_path / "test_fails.py").write_text(textwrap.dedent(f"""
        from containers import docker_engine, docker_tracker  # noqa: F401

        def test_fails(docker_tracker):
            open({str(owner_file)!r}, "w").write(docker_tracker.owner)
            docker_tracker.run({image!r}, ["sleep", "60"], detach=True, network_disabled=True)
            docker_tracker.volume()
            docker_tracker.network()
            assert False, "deliberate failure"
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
         "-c", os.devnull, str(tmp_path / "test_fails.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 1 and "deliberate failure" in proc.stdout, proc.stdout + proc.stderr
    owner = owner_file.read_text()
    flt = {"label": f"{OWNER_LABEL}={owner}"}
    left = (docker_engine.containers.list(all=True, filters=flt) + docker_engine.networks.list(filters=flt)
            + docker_engine.volumes.list(filters=flt))
    assert not left, f"left behind by the failing test: {left}"
