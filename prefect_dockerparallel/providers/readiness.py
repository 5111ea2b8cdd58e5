"""Waiting for a provider's Redis server to answer: shared by every provider.

Why one helper: a wrong password must be an error at once (another cluster's server answering on
a reused address), never a reason to keep polling until the start timeout.
"""

from __future__ import annotations

import time
from typing import Callable

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..protocol.queue import named_ssl_connection, tls_options
from ..specs import Endpoint
from .base import ProviderError


def redis_answers(
    at: Endpoint, password: str, timeout: float = 3.0, ca_pem: str | None = None, tls_name: str | None = None
) -> bool:
    """True once Redis at `at` answers PING; raises ProviderError if it refuses the password.

    With `ca_pem` the server must present a certificate of that CA for `at.host`; a server that
    presents another one is an error at once (another cluster's server on a reused address)."""
    client = redis.Redis(
        host=at.host,
        port=at.port,
        password=password,
        **tls_options(bool(ca_pem), ca_pem),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),  # the caller polls; redis-py's own retries only add delay
    )
    if ca_pem and tls_name and tls_name != at.host:
        client.connection_pool.connection_class = named_ssl_connection(tls_name)
    try:
        return bool(client.ping())
    except redis.AuthenticationError:
        raise ProviderError(f"Redis at {at} rejected this cluster's password (another cluster's?)") from None
    except (redis.RedisError, OSError) as exc:
        if ca_pem and _certificate_refused(exc):
            raise ProviderError(
                f"Redis at {at} presented a TLS certificate this cluster's CA did not sign, not for "
                f"{tls_name or at.host}, or expired: another cluster's server, or something in between"
            ) from None
        return False
    finally:
        client.close()


def poll(cond: Callable[[], bool], timeout: float, what: str, interval: float = 0.5) -> None:
    """Call `cond` until it is true; TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + max(timeout, 0)
    while True:
        if cond():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(interval)


def _certificate_refused(exc: BaseException) -> bool:
    """True when verification of the server's certificate failed (not a refused connection)."""
    import ssl

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
