"""Bounded reads from Redis, and text from Redis made safe to log.

A password holder can push a 500 MiB element onto the task list: a worker that BLMOVEs it would
read all of it before any size check. `limit_replies` makes the client's connections look at each
bulk string's announced length first and refuse one over the limit without reading it (the
connection is dropped, so the bytes are never buffered); the element stays in the worker's
processing list, where `TaskQueue.dead_letter_oversized` moves it aside inside Redis.
"""

from __future__ import annotations

from typing import Any

import redis

# Room for an envelope's header (magic, kind, id, expiry, MAC) above max_payload_bytes.
ENVELOPE_OVERHEAD = 1024


class ReplyTooLarge(redis.DataError):
    """Redis announced a reply larger than this client accepts (not retried: not a ConnectionError)."""


def _limited_connection(base: type[redis.Connection], limit: int) -> type[redis.Connection]:
    """`base` (plain or TLS) whose parser, RESP2 or RESP3, refuses bulk strings over `limit` bytes
    before reading them: the announced length is checked in the socket buffer's `read`."""

    def check(length: int) -> None:
        if length > limit:
            raise ReplyTooLarge(f"Redis sent a reply of {length} bytes; this client accepts {limit}")

    class LimitedConnection(base):  # type: ignore[valid-type, misc]
        def set_parser(self, parser_class: Any) -> None:
            super().set_parser(parser_class)
            parser = self._parser
            connected = parser.on_connect

            def on_connect(connection: Any) -> None:
                connected(connection)
                buffer = getattr(parser, "_buffer", None)  # hiredis has none: no limit there
                if buffer is not None:
                    read = buffer.read

                    def limited_read(length: int, *args: Any, **kwargs: Any) -> Any:
                        check(length)
                        return read(length, *args, **kwargs)

                    buffer.read = limited_read

            parser.on_connect = on_connect

    LimitedConnection.__name__ = f"Limited{base.__name__}"
    return LimitedConnection


def limit_replies(client: redis.Redis, max_bytes: int) -> None:
    """Make every later connection of `client` refuse replies over `max_bytes` unread."""
    pool = client.connection_pool
    pool.connection_class = _limited_connection(pool.connection_class, max_bytes)
    pool.disconnect()
    pool.reset()  # connections keep their parser: drop them all (call before other threads use it)


def safe_text(value: bytes | str, limit: int = 500) -> str:
    """Text from Redis for a log line: control characters escaped (no forged lines), bounded."""
    text = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
    if len(text) > limit:
        text = text[:limit] + f"... ({len(text) - limit} more characters)"
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
