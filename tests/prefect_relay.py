"""The session's Prefect API as containers reach it.

The test Prefect server (tests/prefect_server.py) listens on 127.0.0.1 only, which a container
cannot dial. `PrefectRelay` is a TCP relay on the host's address on Docker's default bridge (a
host address every container reaches, whatever network it is on) to that server. A test using
`prefect_for_containers` runs its flows with that relay URL as PREFECT_API_URL, so the runner
ships it to the workers exactly as it would ship a cloud API URL (and no loopback exception is
needed).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pytest


class PrefectRelay:
    """TCP relay from `listen_host` (an address containers reach) to the Prefect server."""

    def __init__(self, listen_host: str, target: tuple[str, int]) -> None:
        self.target = target
        self.sock = socket.create_server((listen_host, 0))
        self.host, self.port = self.sock.getsockname()[:2]
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="prefect-relay", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self.sock.close()
        with self._lock:
            for conn in self._conns:
                try:
                    conn.close()
                except OSError:
                    pass


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def bridge_gateway(client: Any) -> str:
    """The host's address on Docker's default bridge: reachable from every container."""
    config = client.networks.get("bridge").attrs["IPAM"]["Config"]
    gateway = next((c.get("Gateway") for c in config if c.get("Gateway")), None)
    if not gateway:
        pytest.fail("Docker's default bridge has no gateway address: containers cannot reach this machine")
    return gateway


@pytest.fixture(scope="session")
def prefect_relay(docker_engine: Any) -> Iterator[str]:
    """The session's Prefect API as containers reach it (one relay per session: Prefect's
    events worker of a test may still flush through it after the test)."""
    from prefect_server import shared_server

    api = urlparse(shared_server().api_url)
    relay = PrefectRelay(bridge_gateway(docker_engine), (api.hostname or "127.0.0.1", int(api.port or 80)))
    try:
        yield f"http://{relay.host}:{relay.port}{api.path}"
    finally:
        relay.close()


@pytest.fixture
def prefect_for_containers(prefect_relay: str) -> Iterator[str]:
    """This test's flows use the API URL containers reach (so workers receive it, as they would
    a cloud API URL)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_relay}):
        yield prefect_relay
