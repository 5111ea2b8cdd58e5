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

from ..specs import Endpoint
from .base import ProviderError


def redis_answers(at: Endpoint, password: str, timeout: float = 3.0) -> bool:
    """True once Redis at `at` answers PING; raises ProviderError if it refuses the password."""
    client = redis.Redis(
        host=at.host,
        port=at.port,
        password=password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),  # the caller polls; redis-py's own retries only add delay
    )
    try:
        return bool(client.ping())
    except redis.AuthenticationError:
        raise ProviderError(f"Redis at {at} rejected this cluster's password (another cluster's?)") from None
    except (redis.RedisError, OSError):
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
