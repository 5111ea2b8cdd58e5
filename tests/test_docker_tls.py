"""TLS between the flow runner and a DockerProvider cluster's Redis, on the real Docker engine.

A recording TCP proxy sits between the driver and the server's published port and keeps every
byte of a flow run whose settings carry a known fake PREFECT_API_KEY and whose task returns a
known marker. With TLS (the default) none of the secrets is in the capture; with TLS turned off
the same capture shows them, so the test can fail.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import threading
import time
import uuid

import pytest
import redis
from prefect import flow, task

from containers import docker_engine, docker_tracker, test_images  # noqa: F401
from docker_support import container_api, dev_worker_image, docker_cluster_kwargs, pump, ship_by_value  # noqa: F401
from helpers import wait_until

from prefect_dockerparallel import DockerCluster, DockerParallelTaskRunner
from prefect_dockerparallel.protocol.queue import connect
from prefect_dockerparallel.providers.base import ProviderError
from prefect_dockerparallel.providers.docker.driver import DockerDriver
from prefect_dockerparallel.providers.readiness import redis_answers
from prefect_dockerparallel.providers.tls import CertificateExpired, check_not_expired, generate
from prefect_dockerparallel.specs import Endpoint

ship_by_value(__name__)
FAKE_API_KEY = "pnu_FAKEapiKEYforTHEtlsTEST0123456789ab"


class RecordingProxy:
    """127.0.0.1:<port> -> the target set once the server is up; keeps every byte both ways."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target: Endpoint | None = None
        self.captured = bytearray()
        self.connections = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                inbound, _ = self.listener.accept()
            except OSError:
                return
            assert self.target is not None
            try:
                outbound = socket.create_connection((self.target.host, self.target.port), timeout=10)
            except OSError:
                inbound.close()
                continue
            outbound.settimeout(None)
            self.connections += 1
            for src, dst in ((inbound, outbound), (outbound, inbound)):
                threading.Thread(target=pump, args=(src, dst, self._record), daemon=True).start()

    def _record(self, data: bytes) -> None:
        with self._lock:
            self.captured += data

    def close(self) -> None:
        self.listener.close()


class ProxiedDockerDriver(DockerDriver):
    """The driver, connecting to Redis through a RecordingProxy (127.0.0.1 is in the SANs)."""

    def __init__(self, proxy: RecordingProxy, **kwargs) -> None:
        super().__init__(**kwargs)
        self.proxy = proxy

    def _through_proxy(self, handle):
        if handle is None:
            return None
        self.proxy.target = handle.driver
        return dataclasses.replace(handle, driver=Endpoint("127.0.0.1", self.proxy.port))

    def start_server(self, spec, secrets):
        handle = super().start_server(spec, secrets)
        self.started = (secrets, handle)
        return self._through_proxy(handle)

    def server_handle(self, spec):
        return self._through_proxy(super().server_handle(spec))


@task
def marked(x: int) -> str:
    return f"MARKER-{x}-e5b1c0de"


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plaintext"])
def test_a_recorded_flow_run_shows_no_secret_with_tls_and_all_of_them_without(
    tls, docker_engine, docker_tracker, dev_worker_image, container_api, caplog
):
    from prefect.settings import PREFECT_API_KEY, temporary_settings

    proxy = RecordingProxy()
    kwargs = docker_cluster_kwargs(docker_tracker, dev_worker_image)
    kwargs["provider"] = ProxiedDockerDriver(proxy, start_timeout=60, tls=tls)
    driver = kwargs["provider"]

    @flow(task_runner=DockerParallelTaskRunner(workers=1, **kwargs))
    def recorded() -> list[str]:
        return [f.result() for f in marked.map([7])]

    try:
        with temporary_settings({PREFECT_API_KEY: FAKE_API_KEY}), caplog.at_level(logging.WARNING):
            assert recorded() == ["MARKER-7-e5b1c0de"]
    finally:
        proxy.close()
    capture = bytes(proxy.captured)
    secrets_, handle = driver.started
    seen = {"password": secrets_.redis_password, "signing_key": secrets_.signing_key, "ca": handle.ca_pem}
    assert proxy.connections >= 1 and len(capture) > 10_000, (proxy.connections, len(capture))
    secrets = {
        "password": seen["password"].encode(),
        "API key": FAKE_API_KEY.encode(),
        "marker": b"MARKER-7-e5b1c0de",
    }
    found = {what for what, needle in secrets.items() if needle in capture}
    # The signing key never crosses this link at all (the provider copies it into the containers
    # as a file): neither form of it may appear, with or without TLS.
    key = seen["signing_key"]
    assert key not in capture and key.hex().encode() not in capture
    if tls:
        assert seen["ca"] and found == set(), f"in the TLS capture: {found}"
        assert b"-----BEGIN" not in capture  # no PEM travels either: certificates are DER in the handshake
        assert "TLS is OFF" not in caplog.text
    else:
        assert seen["ca"] is None and found == set(secrets), f"missing from the plaintext capture: {set(secrets) - found}"
        assert "TLS is OFF" in caplog.text and "PREFECT_API_KEY" in caplog.text


def test_the_server_refuses_clients_without_the_cluster_ca_and_has_no_plaintext_port(
    docker_engine, docker_tracker, dev_worker_image
):
    cluster = DockerCluster(workers=1, idle_timeout=30, **docker_cluster_kwargs(docker_tracker, dev_worker_image))
    try:
        cluster.start()
        at, ca, password = cluster.server.driver, cluster.server.ca_pem, cluster.secrets.redis_password
        assert cluster.server.tls and ca.startswith("-----BEGIN CERTIFICATE-----")
        assert connect(at.host, at.port, password, ca_pem=ca).ping()  # the driver's own way works

        def refused(client: redis.Redis) -> str:
            with pytest.raises(redis.ConnectionError) as info:
                client.ping()
            return str(info.value)

        # right password, no CA (the system trust store): refused
        assert "CERTIFICATE_VERIFY_FAILED" in refused(redis.Redis(host=at.host, port=at.port, password=password,
                                                                  ssl=True, socket_timeout=5))
        # right password, another cluster's CA: refused, and readiness says so at once
        other = generate("another-cluster", ["127.0.0.1"])
        assert "CERTIFICATE_VERIFY_FAILED" in refused(connect(at.host, at.port, password, ca_pem=other.ca_pem))
        with pytest.raises(ProviderError, match="did not sign"):
            redis_answers(at, password, ca_pem=other.ca_pem)
        # the right CA for a name the certificate does not carry: refused (hostname checking is on)
        assert "Hostname mismatch" in refused(connect(socket.gethostname(), at.port, password, ca_pem=ca))
        # plaintext on the published port: no answer
        refused(redis.Redis(host=at.host, port=at.port, password=password, socket_timeout=5))
        # inside the container no plaintext listener either, and the PEM files are gone
        server = docker_engine.containers.get(f"dp-{cluster.name}-server")
        probe = server.exec_run(["redis-cli", "-p", "6379", "PING"])
        assert b"PONG" not in probe.output, probe.output
        assert b"dp-tls-" not in server.exec_run(["ls", "-a", "/dev/shm", "/tmp"]).output
        # the password alone does not take the server over (issue 17): the same lockdown as locally
        locked = connect(at.host, at.port, password, ca_pem=ca)
        for command in (("MODULE", "LOAD", "/tmp/x.so"), ("CONFIG", "SET", "dir", "/tmp"), ("DEBUG", "SLEEP", "0"),
                        ("SAVE",), ("BGSAVE",), ("FLUSHALL",)):
            with pytest.raises(redis.ResponseError):
                locked.execute_command(*command)
        # workers verify too: the one worker joined over TLS
        assert wait_until(lambda: cluster.worker_numbers().running == 1, 90), cluster.worker_numbers()
        with cluster.executor() as ex:
            assert ex.submit(pow, 2, 5).result(timeout=60) == 32

        # the key is in the server's 0600 secrets file only: not in `docker inspect` of any
        # container, not in any worker's file, not in the logs
        key_body = _pem_body(_server_key(server))
        [worker] = docker_engine.containers.list(
            filters={"label": [f"dockerparallel-cluster={cluster.name}", "dockerparallel-role=worker"]})
        for container in (server, worker):
            shown = json.dumps(docker_engine.api.inspect_container(container.id))
            assert key_body not in shown and password not in shown
        assert b"PRIVATE KEY" not in worker.exec_run(["cat", "/run/dockerparallel/secrets.json"]).output
        assert key_body not in cluster.logs()
    finally:
        cluster.stop()


def _server_key(server) -> str:
    raw = server.exec_run(["cat", "/run/dockerparallel/secrets.json"]).output
    return json.loads(raw)["DOCKERPARALLEL_REDIS_TLS_KEY"]


def _pem_body(pem: str) -> str:
    return "".join(line for line in pem.splitlines() if not line.startswith("-----"))[:40]


def test_a_cluster_that_outlives_its_certificate_is_refused_with_a_clear_error(
    docker_engine, docker_tracker, dev_worker_image
):
    kwargs = docker_cluster_kwargs(docker_tracker, dev_worker_image)
    lifetime = 20.0
    kwargs["provider"] = DockerDriver(start_timeout=60, tls_lifetime=lifetime)
    cluster = DockerCluster(workers=0, idle_timeout=60, **kwargs)
    try:
        started = time.time()
        cluster.start()
        at, ca, password = cluster.server.driver, cluster.server.ca_pem, cluster.secrets.redis_password
        check_not_expired(cluster.name, ca)  # still valid
        assert wait_until(lambda: time.time() > started + lifetime + 1, lifetime + 10, interval=0.5)
        # the certificate really expired: a new verified connection is refused by TLS itself
        with pytest.raises(redis.ConnectionError, match="expired"):
            connect(at.host, at.port, password, ca_pem=ca).ping()
        # ... and the cluster says why, before trying: no new worker, no reconnect
        with pytest.raises(CertificateExpired, match=r"TLS certificate expired at .*\(tls_lifetime_hours\)"):
            cluster.driver.set_worker_containers(cluster.spec, 1, cluster.secrets, cluster.server)
        other = DockerCluster(name=cluster.name, stop_on_exit=False, **kwargs)
        with pytest.raises(CertificateExpired, match=f"cluster {cluster.name!r}"):
            other.reconnect()
        # the connection opened before the expiry keeps working until the cluster is stopped
        assert cluster.queue.redis.ping()
    finally:
        cluster.stop()
