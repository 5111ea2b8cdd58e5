"""The per-cluster CA and server certificate (providers/tls.py) and the server's TLS-only config."""

from __future__ import annotations

import ipaddress
import os
import stat

import pytest
from cryptography import x509

from prefect_dockerparallel.blocks.docker import DockerProvider
from prefect_dockerparallel.container.server import redis_config, remove_tls_files, write_tls_files
from prefect_dockerparallel.providers.base import server_env, worker_env
from prefect_dockerparallel.providers.docker import objects as O
from prefect_dockerparallel.providers.tls import CertificateExpired, check_not_expired, generate, not_after
from prefect_dockerparallel.specs import ClusterSecrets, ClusterSpec, Endpoint


def test_the_certificate_names_every_address_is_short_lived_and_signed_by_the_cluster_ca():
    tls = generate("c1", ["dp-c1-server", "10.0.0.5", "build-box.example"], lifetime=3600)
    cert = x509.load_pem_x509_certificate(tls.cert_pem.encode())
    ca = x509.load_pem_x509_certificate(tls.ca_pem.encode())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"localhost", "dp-c1-server", "build-box.example"}
    assert set(sans.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("10.0.0.5")}
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert abs(not_after(tls.ca_pem) - tls.not_after) < 1
    assert 3500 < (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds() - 300 < 3700
    assert "PRIVATE" not in repr(tls) and tls.key_pem.startswith("-----BEGIN PRIVATE KEY-----")
    # every cluster its own CA: one cluster's CA does not sign another's certificate
    other = x509.load_pem_x509_certificate(generate("c2", []).ca_pem.encode())
    with pytest.raises(Exception):
        cert.verify_directly_issued_by(other)


def test_expiry_is_a_clear_error():
    tls = generate("c1", [], lifetime=60)
    check_not_expired("c1", tls.ca_pem)
    check_not_expired("c1", None)  # no TLS: nothing to expire
    with pytest.raises(CertificateExpired, match="cluster 'c1': its TLS certificate expired at .* start a new one"):
        check_not_expired("c1", tls.ca_pem, now=tls.not_after + 1)


def test_the_key_is_a_secret_variable_and_the_ca_reaches_workers():
    spec, secrets = ClusterSpec(name="c1"), ClusterSecrets.generate()
    tls = generate("c1", ["dp-c1-server"])
    env, hidden = O.split_secrets(server_env(spec, secrets, tls=tls))
    assert hidden["DOCKERPARALLEL_REDIS_TLS_KEY"] == tls.key_pem and "DOCKERPARALLEL_REDIS_TLS_KEY" not in env
    assert env["DOCKERPARALLEL_REDIS_CA"] == tls.ca_pem and env["DOCKERPARALLEL_REDIS_TLS"] == "1"
    workers = worker_env(spec, secrets, Endpoint("dp-c1-server", 6379), tls=True, ca_pem=tls.ca_pem)
    assert workers["DOCKERPARALLEL_REDIS_CA"] == tls.ca_pem and "DOCKERPARALLEL_REDIS_TLS_KEY" not in workers
    assert "DOCKERPARALLEL_REDIS_TLS" not in server_env(spec, secrets)  # TLS off: plaintext as before
    from prefect_dockerparallel.providers.ecs.secrets import is_secret_env

    assert is_secret_env("DOCKERPARALLEL_REDIS_TLS_KEY") and not is_secret_env("DOCKERPARALLEL_REDIS_CA")


def test_tls_only_config_and_private_pem_files():
    tls = generate("c1", [])
    files = write_tls_files(tls.cert_pem, tls.key_pem, tls.ca_pem)
    try:
        assert stat.S_IMODE(os.stat(files.folder).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(files.key).st_mode) == 0o600
        config = redis_config(6379, "pw", "0.0.0.0", files).splitlines()
        assert config[:2] == ["port 0", "tls-port 6379"] and "tls-auth-clients no" in config
    finally:
        remove_tls_files(files)
    assert not os.path.exists(files.folder)
    assert redis_config(6379, "pw", "127.0.0.1").splitlines()[0] == "port 6379"


def test_the_docker_block_turns_tls_off_only_when_asked():
    driver = DockerProvider().build_provider()
    assert driver.tls is True and driver.tls_lifetime == 24 * 3600
    driver = DockerProvider(tls=False, tls_lifetime_hours=2).build_provider()
    assert driver.tls is False and driver.tls_lifetime == 7200
