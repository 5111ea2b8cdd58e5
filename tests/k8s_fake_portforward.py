"""Pod port-forward of the fake API server: the WebSocket channel protocol (v4.channel.k8s.io).

What `kubectl port-forward` and `kubernetes.stream.portforward` speak: an HTTP/1.1 Upgrade to
WebSocket on GET .../pods/{name}/portforward?ports=P; per port two channels (data = 2i, error
= 2i+1), each opened by a server frame [channel, port lo, port hi]; then binary frames
[channel] + bytes both ways. The fake's pods share the host network, so the pod end is
127.0.0.1:P. RFC 6455 framing is written out here (client frames are masked, ours are not).
"""

from __future__ import annotations

import base64
import hashlib
import select
import socket
import struct
import threading
from typing import Any

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x2, 0x8, 0x9, 0xA


def frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([n])
    elif n < 1 << 16:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + payload


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("websocket closed")
        buf += chunk
    return buf


def read_frame(sock: socket.socket) -> tuple[int, bytes]:
    b1, b2 = _read_exact(sock, 2)
    opcode, masked, n = b1 & 0x0F, b2 & 0x80, b2 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", _read_exact(sock, 2))
    elif n == 127:
        (n,) = struct.unpack("!Q", _read_exact(sock, 8))
    mask = _read_exact(sock, 4) if masked else b""
    data = _read_exact(sock, n)
    if mask:
        data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    return opcode, data


class PortForwardSessions:
    """Open forwarding sockets, so the fake can close them all when it stops."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sockets: set[socket.socket] = set()
        self.opened = 0
        self.reject_next = 0  # this many port-forward handshakes fail with 400 (an overloaded API server)
        self.rejected = 0

    def take_rejection(self) -> bool:
        with self.lock:
            if self.reject_next <= 0:
                return False
            self.reject_next -= 1
            self.rejected += 1
            return True

    def drop_all(self) -> None:
        """Cut every open forward (the API server dropped its streams), as close_all does."""
        self.close_all()

    def close_all(self) -> None:
        with self.lock:
            for s in list(self.sockets):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.sockets.clear()


def serve_portforward(handler: Any, port: int, sessions: PortForwardSessions) -> None:
    """Complete the Upgrade on `handler` (a BaseHTTPRequestHandler) and pump bytes until closed."""
    key = handler.headers.get("Sec-WebSocket-Key", "")
    accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    offered = [p.strip() for p in (handler.headers.get("Sec-WebSocket-Protocol") or "").split(",")]
    handler.send_response(101, "Switching Protocols")
    handler.send_header("Upgrade", "websocket")
    handler.send_header("Connection", "Upgrade")
    handler.send_header("Sec-WebSocket-Accept", accept)
    if "v4.channel.k8s.io" in offered:
        handler.send_header("Sec-WebSocket-Protocol", "v4.channel.k8s.io")
    handler.end_headers()
    handler.wfile.flush()
    handler.close_connection = True
    ws: socket.socket = handler.connection
    lohi = bytes([port & 0xFF, port >> 8])
    ws.sendall(frame(OP_BINARY, b"\x00" + lohi) + frame(OP_BINARY, b"\x01" + lohi))
    try:
        pod = socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError as exc:
        msg = f"error forwarding port {port} to pod: {exc}".encode()
        ws.sendall(frame(OP_BINARY, b"\x01" + msg) + frame(OP_CLOSE, struct.pack("!H", 1000)))
        return
    pod.settimeout(None)
    with sessions.lock:
        sessions.sockets.update({pod, ws})
        sessions.opened += 1
    try:
        _pump(ws, pod)
    finally:
        with sessions.lock:
            sessions.sockets.discard(pod)
            sessions.sockets.discard(ws)
        pod.close()
        try:
            ws.sendall(frame(OP_CLOSE, struct.pack("!H", 1000)))
        except OSError:
            pass


def _pump(ws: socket.socket, pod: socket.socket) -> None:
    while True:
        try:
            readable, _, _ = select.select([ws, pod], [], [], 1.0)
        except (OSError, ValueError):
            return
        for sock in readable:
            try:
                if sock is pod:
                    data = pod.recv(65536)
                    if not data:
                        return
                    ws.sendall(frame(OP_BINARY, b"\x00" + data))
                    continue
                opcode, data = read_frame(ws)
            except (OSError, ConnectionError):
                return
            if opcode == OP_CLOSE:
                return
            if opcode == OP_PING:
                ws.sendall(frame(OP_PONG, data))
            elif opcode in (OP_BINARY, OP_CONT) and data:
                if data[0] != 0:
                    continue  # only the data channel of the first port carries bytes to the pod
                if data[1:]:
                    pod.sendall(data[1:])
