"""A local TCP port that forwards to a pod port through the API server (kubectl port-forward).

Why: the flow runner reaches Redis with no public endpoint at all — traffic goes over the API
server's TLS connection, authenticated by the kubeconfig, and only `pods/portforward` RBAC is
needed. Each accepted local connection opens its own port-forward WebSocket (the client's
`kubernetes.stream.portforward`), so redis-py's connection pool works unchanged.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from typing import Any, Callable

log = logging.getLogger(__name__)

OPEN_RETRY_WINDOW = 10.0  # seconds a rejected port-forward handshake is retried (redis-py waits 30 s)


class PortForwarder:
    """Listens on 127.0.0.1:<ephemeral>; `open_remote()` gives a socket to the pod's port."""

    def __init__(self, open_remote: Callable[[], Any], what: str) -> None:
        self._open_remote = open_remote
        self.what = what
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[Any] = set()
        self._last_warning = -1e9
        self._thread = threading.Thread(target=self._accept_loop, name=f"dp-port-forward {what}", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return not self._closed.is_set()

    def close(self) -> None:
        self._closed.set()
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            _close(conn)
        self._thread.join(timeout=5)

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                readable, _, _ = select.select([self._listener], [], [], 0.5)
                if not readable:
                    continue
                conn, _ = self._listener.accept()
            except (OSError, ValueError):
                return
            threading.Thread(target=self._bridge, args=(conn,), name="dp-port-forward-conn", daemon=True).start()

    def _open_with_backoff(self) -> Any:
        """Open the pod's side, retrying a rejected handshake (an API server under load answers
        `Handshake status 400`) with backoff for up to OPEN_RETRY_WINDOW seconds, while the local
        client waits on its accepted connection. Only a pod that stays unreachable fails it."""
        deadline = time.monotonic() + OPEN_RETRY_WINDOW
        delay = 0.1
        while True:
            try:
                return self._open_remote()
            except Exception as exc:  # noqa: BLE001 - retried, then reported
                if self._closed.is_set() or time.monotonic() + delay > deadline:
                    raise
                log.debug("port-forward to %s failed (%s); retrying in %.1f s", self.what, exc, delay)
                self._closed.wait(delay)
                delay = min(delay * 2, 2.0)

    def _bridge(self, conn: socket.socket) -> None:
        try:
            forward, remote = self._open_with_backoff()
        except Exception as exc:  # noqa: BLE001 - reported, and the client sees a closed socket
            now = time.monotonic()
            if now - self._last_warning > 30:  # a gone pod makes every reconnect fail: say it once
                self._last_warning = now
                log.warning("port-forward to %s failed for %.0f s: %s", self.what, OPEN_RETRY_WINDOW, exc)
            _close(conn)
            return
        with self._lock:
            if self._closed.is_set():
                _close(conn), _close(remote), forward.close()
                return
            self._conns.update({conn, remote})
        try:
            _pump(conn, remote)
        finally:
            with self._lock:
                self._conns.discard(conn)
                self._conns.discard(remote)
            _close(conn)
            _close(remote)
            try:
                forward.close()
            except Exception:  # noqa: BLE001 - already closed by the other side
                pass


def _pump(a: Any, b: Any) -> None:
    """Copy bytes both ways until either side closes."""
    while True:
        try:
            readable, _, _ = select.select([a, b], [], [], 1.0)
        except (OSError, ValueError):
            return
        for src in readable:
            dst = b if src is a else a
            try:
                data = src.recv(65536)
                if not data:
                    return
                dst.sendall(data)
            except OSError:
                return


def _close(sock: Any) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except (OSError, AttributeError):
        pass
    try:
        sock.close()
    except OSError:
        pass
