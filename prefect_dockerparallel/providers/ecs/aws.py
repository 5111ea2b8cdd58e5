"""boto3 plumbing for the ECS driver: sessions, clients, throttling backoff, tag formats.

Only the ECS driver modules import this (and so boto3): importing the collection must not.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

log = logging.getLogger("prefect_dockerparallel.ecs")

T = TypeVar("T")

THROTTLING_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "ServerException",  # ECS: transient, documented as retryable
    }
)

# Tag keys: per-run resources carry spec.labels; account-level networking carries NETWORK_TAG.
CLUSTER_TAG = "dockerparallel-cluster"
FLOW_RUN_TAG = "dockerparallel-flow-run"
ROLE_TAG = "dockerparallel-role"
NETWORK_TAG = "dockerparallel-network"


def make_session(
    region_name: str,
    aws_access_key_id: str | None,
    aws_secret_access_key: str | None,
    aws_session_token: str | None,
    profile_name: str | None,
) -> boto3.session.Session:
    """Explicit keys, else a profile, else boto3's default chain (env, SSO, instance role...)."""
    if aws_access_key_id and aws_secret_access_key:
        return boto3.session.Session(
            aws_access_key_id=aws_access_key_id,
            aws_secret_access_key=aws_secret_access_key,
            aws_session_token=aws_session_token,
            region_name=region_name,
        )
    return boto3.session.Session(profile_name=profile_name, region_name=region_name)


def make_client(session: boto3.session.Session, service: str, endpoint_url: str | None) -> Any:
    # botocore's standard retry mode already retries throttling a few times; `with_backoff`
    # adds a longer, bounded loop for the calls that matter (RunTask bursts).
    config = Config(retries={"mode": "standard", "max_attempts": 4}, connect_timeout=10, read_timeout=60)
    return session.client(service, endpoint_url=endpoint_url, config=config)


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def with_backoff(
    call: Callable[[], T],
    what: str,
    *,
    attempts: int = 8,
    base: float = 0.5,
    cap: float = 20.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run `call`, retrying throttling errors with full-jitter exponential backoff."""
    for attempt in range(attempts):
        try:
            return call()
        except ClientError as exc:
            if error_code(exc) not in THROTTLING_CODES or attempt == attempts - 1:
                raise
            delay = random.uniform(0, min(cap, base * 2**attempt))
            log.info("%s throttled (%s); retrying in %.2fs", what, error_code(exc), delay)
            sleep(delay)
    raise AssertionError("unreachable")


def ecs_tags(labels: dict[str, str]) -> list[dict[str, str]]:
    return [{"key": k, "value": v} for k, v in sorted(labels.items())]


def aws_tags(labels: dict[str, str]) -> list[dict[str, str]]:
    """EC2 / SSM / IAM tag format (capitalised keys)."""
    return [{"Key": k, "Value": v} for k, v in sorted(labels.items())]


def from_ecs_tags(tags: list[dict[str, str]] | None) -> dict[str, str]:
    return {t["key"]: t["value"] for t in tags or []}


def from_aws_tags(tags: list[dict[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in tags or []}


def chunks(items: list[T], size: int) -> list[list[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
