"""From the runner's arguments (block name, ClusterConfig, overrides) to a DockerCluster.

Runs on the driver at the first submit, so a saved block edited in the UI applies to the next
run. Checks that need the flow run (API URL reachable by remote workers, result storage) happen
here, before anything is provisioned.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from typing import Any
from urllib.parse import urlparse

from ..cluster import DockerCluster, as_driver

log = logging.getLogger("prefect_dockerparallel.config")

ALLOW_LOOPBACK_ENV = "DOCKERPARALLEL_ALLOW_LOOPBACK_API"


def load_cluster_config(cluster: Any) -> Any:
    """The ClusterConfig block named or given, or None for the local default."""
    from ..blocks import ClusterConfig

    if cluster is None:
        from ..settings import default_cluster_block_name

        cluster = default_cluster_block_name()
    if cluster is None or isinstance(cluster, ClusterConfig):
        return cluster
    if isinstance(cluster, str):
        from prefect.exceptions import ObjectNotFound
        from pydantic import ValidationError

        try:
            config = ClusterConfig.load(cluster, _sync=True)
        except ValidationError as exc:
            raise ValueError(f"cluster={cluster!r}: the saved ClusterConfig is invalid; fix it in the Prefect UI: {exc}") from None
        except ValueError as exc:
            if not isinstance(exc.__cause__, ObjectNotFound):
                raise  # the block's own message (no provider, lost secret) names the fix
            raise ValueError(
                f"cluster={cluster!r}: no saved ClusterConfig block of that name; create it in "
                "the Prefect UI or with blocks/save_examples.py"
            ) from None
        _keep_ui_links(cluster, config)
        return config
    raise ValueError(f"cluster={cluster!r} is invalid: give a ClusterConfig block name or a ClusterConfig")


def _keep_ui_links(name: str, config: Any) -> None:
    """Stamp nested blocks created in a UI so that the next UI save keeps their references, and
    say when a document embeds its blocks (an older save: the V1 UI would drop them)."""
    try:
        config.repair_ui_links()
    except Exception as exc:  # noqa: BLE001 - never block a flow run on a metadata write
        log.debug("could not stamp the nested blocks of ClusterConfig %r: %s", name, exc)
    if config._embedded:
        log.warning(
            "ClusterConfig %r stores its %s inline, which the Prefect UI cannot show (and its V1 UI "
            "drops on save): re-save it with `python blocks/relink.py %s` to keep it editable",
            name,
            " and ".join(config._embedded),
            name,
        )


def _flow_run_id() -> str | None:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return str(ctx.flow_run.id) if ctx and ctx.flow_run else None


def check_api_url_reachable(driver: Any) -> None:
    """Remote workers cannot reach a loopback-only API URL: say so before paying for them."""
    if not driver.is_remote or os.environ.get(ALLOW_LOOPBACK_ENV) == "1":
        return
    from .submission import effective_api_url

    url = effective_api_url()
    host = urlparse(url or "").hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not url or loopback:
        raise ValueError(
            f"PREFECT_API_URL is {url or 'unset (an ephemeral server)'}, which {driver.kind} workers "
            "cannot reach: set PREFECT_API_URL to an address reachable from the cloud (Prefect Cloud "
            f"or a server with a public/VPC address), or set {ALLOW_LOOPBACK_ENV}=1 if you tunnel it"
        )


def warn_local_result_storage(driver: Any) -> None:
    if not driver.is_remote:
        return
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.results.persist_by_default and not settings.results.default_storage_block:
        log.warning(
            "results are persisted to local disk on the workers and are lost when the %s cluster is "
            "torn down; set PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK to object storage (S3, Azure Blob)",
            driver.kind,
        )


def build_cluster(cluster: Any, overrides: dict[str, Any]) -> DockerCluster:
    if hasattr(cluster, "start") and hasattr(cluster, "worker_numbers"):
        return cluster  # an existing DockerCluster
    config = load_cluster_config(cluster)
    fields: dict[str, Any] = {}
    if config is not None:
        fields = {
            "provider": config.provider,
            "container": config.container,
            "workers": config.workers,
            "worker_cpu": config.worker_cpu,
            "worker_memory": config.worker_memory,
            "server_cpu": config.server_cpu,
            "server_memory": config.server_memory,
            "idle_timeout": config.idle_timeout,
            "tags": dict(config.tags),
            "min_workers": config.min_workers,
            "max_workers": config.max_workers,
            "scale_down_after": config.scale_down_after,
            "keep_alive": config.keep_alive,
        }
    fields.update({k: v for k, v in overrides.items() if v is not None})
    driver = as_driver(fields.pop("provider", None))
    check_api_url_reachable(driver)
    warn_local_result_storage(driver)
    return DockerCluster(provider=driver, flow_run_id=_flow_run_id(), **fields)


def finish_cluster(cluster: DockerCluster, pending: tuple[str, str] | None = None) -> None:
    """Publish the cluster summary artifact, then stop everything (`pending`: how the futures
    still pending end, once the workers are gone)."""
    try:
        publish_summary(cluster)
    except Exception as exc:  # noqa: BLE001 - a report must never keep resources alive
        log.warning("could not publish the cluster summary: %s", exc)
    finally:
        if cluster.keep_alive:
            cluster.detach(pending)  # warm: the next run attaches; the lease stops it otherwise
        else:
            cluster.stop(**({"pending": pending} if pending else {}))


def publish_summary(cluster: DockerCluster) -> None:
    """The cluster summary as a markdown artifact of the flow run (cost estimate for Fargate)."""
    from .summary import cluster_summary_markdown, publish_summary_artifact

    spec = cluster.spec
    if not spec.flow_run_id:
        return
    seconds = time.monotonic() - cluster.started_at if cluster.started_at else 0.0
    container_seconds = seconds * spec.containers_for(cluster.expected)
    containers_started = spec.containers_for(cluster.expected)
    scaler, scaling = cluster.autoscaler, None
    if scaler is not None and scaler.history:
        container_seconds = scaler.container_seconds(time.monotonic(), spec.containers_for)
        containers_started = max(spec.containers_for(n) for _, n in scaler.history)
        scaling = scaler.timeline(cluster.started_at)
    markdown = cluster_summary_markdown(
        provider_kind=cluster.driver.kind,
        worker_numbers=cluster.worker_numbers(),
        container_seconds=container_seconds,
        worker_cpu=spec.worker_cpu,
        worker_memory=spec.worker_memory,
        workers_per_container=spec.container.workers_per_container,
        containers_started=containers_started,
        scaling=scaling,
        server_seconds=seconds,
        server_cpu=spec.server_cpu,
        server_memory=spec.server_memory,
        cluster_name=cluster.name,
        wall_seconds=seconds,
    )
    if cluster.dead_lettered:
        markdown += (
            f"\n\n**{cluster.dead_lettered} element(s) put aside** (dead-lettered: oversized, forged, or "
            "impossible to ack) instead of being run; someone with the Redis password pushed them, or a "
            "worker could not ack. The driver's log names each one."
        )
    publish_summary_artifact(markdown, spec.flow_run_id, key=f"dockerparallel-{cluster.name}")
