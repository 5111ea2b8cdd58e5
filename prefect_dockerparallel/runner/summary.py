"""The end-of-run cluster summary, published by the runner as a Prefect markdown artifact.

Formatting needs no Prefect and no provider imports, so it is cheap to test and to call from the
runner's teardown. The cost line is an *estimate*: Fargate list prices for one region, applied
to the container-seconds the cluster measured; it ignores storage, data transfer, public IPv4
and Savings Plans / Spot discounts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Protocol, Sequence


@dataclass(frozen=True)
class FargatePrices:
    """On-demand Fargate list prices in USD. Keep every price in `FARGATE_PRICES`."""

    region: str
    architecture: str
    per_vcpu_hour: float
    per_gb_hour: float
    minimum_seconds: int
    as_of: str
    source: str


FARGATE_PRICES = FargatePrices(
    region="us-east-1",
    architecture="Linux/x86_64",
    per_vcpu_hour=0.04048,
    per_gb_hour=0.004445,
    # Fargate bills per second with a one-minute minimum per task.
    minimum_seconds=60,
    # These rates have been the us-east-1 list prices since the January 2019 price cut;
    # re-checked against public price tables in 2026-06.
    as_of="2026-06",
    source="https://aws.amazon.com/fargate/pricing/",
)


class _Numbers(Protocol):
    expected: int
    running: int
    initializing: int


def fargate_cost_usd(
    container_seconds: float,
    vcpu: float,
    memory_gb: float,
    containers: int = 0,
    prices: FargatePrices = FARGATE_PRICES,
) -> float:
    """Estimated cost of `container_seconds` of tasks sized `vcpu` / `memory_gb`.

    With `containers` > 0 the one-minute minimum is applied to the total (a lower bound of the
    per-task rule, since per-task durations are not known here).
    """
    seconds = max(container_seconds, float(containers * prices.minimum_seconds))
    hours = seconds / 3600.0
    return hours * (vcpu * prices.per_vcpu_hour + memory_gb * prices.per_gb_hour)


def _duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def cluster_summary_markdown(
    provider_kind: str,
    worker_numbers: _Numbers | tuple[int, int, int],
    container_seconds: float,
    worker_cpu: int,
    worker_memory: int,
    *,
    workers_per_container: int = 1,
    containers_started: int = 0,
    server_seconds: float = 0.0,
    server_cpu: int = 256,
    server_memory: int = 512,
    cluster_name: Optional[str] = None,
    wall_seconds: Optional[float] = None,
    task_counts: Optional[Mapping[str, int]] = None,
    scaling: Optional[Sequence[tuple[float, int]]] = None,
    prices: FargatePrices = FARGATE_PRICES,
) -> str:
    """Markdown summary of one flow run's cluster.

    `worker_cpu` (1024 = 1 vCPU) and `worker_memory` (MB) are per worker slot, as in
    `ClusterConfig`; a container holds `workers_per_container` slots, so it is sized
    `worker_cpu * workers_per_container`. `container_seconds` is the sum over worker containers
    of their running time; `server_seconds` that of the Redis server container. `worker_numbers`
    is a `WorkerNumbers` (or an (expected, running, initializing) tuple) as last observed.
    The Fargate estimate is shown for `provider_kind == "ecs"`; for other providers it is shown
    as what the same containers would cost on Fargate, for comparison.
    """
    if isinstance(worker_numbers, tuple):
        expected, running, initializing = worker_numbers
    else:
        expected, running, initializing = (
            worker_numbers.expected,
            worker_numbers.running,
            worker_numbers.initializing,
        )
    slots = max(1, workers_per_container)
    cpu_units, memory_mb = worker_cpu * slots, worker_memory * slots
    if provider_kind == "ecs":
        # The ECS provider rounds each worker task up to the next valid Fargate size.
        from ..providers.ecs.sizes import round_up

        size = round_up(cpu_units, memory_mb)
        if size is not None:
            cpu_units, memory_mb = size.cpu, size.memory
    vcpu = cpu_units / 1024.0
    memory_gb = memory_mb / 1024.0
    worker_cost = fargate_cost_usd(container_seconds, vcpu, memory_gb, containers_started, prices)
    server_cost = (
        fargate_cost_usd(server_seconds, server_cpu / 1024.0, server_memory / 1024.0, 1, prices)
        if server_seconds > 0
        else 0.0
    )
    total = worker_cost + server_cost

    title = f"## DockerParallel cluster `{cluster_name}`" if cluster_name else "## DockerParallel cluster"
    rows = [
        ("Provider", provider_kind),
        ("Workers (expected / running / initializing)", f"{expected} / {running} / {initializing}"),
        ("Worker container size", f"{vcpu:g} vCPU, {memory_gb:g} GB ({slots} slot(s) of {worker_cpu} CPU units / {worker_memory} MB)"),
        ("Worker containers started", str(containers_started) if containers_started else "-"),
        ("Worker container-seconds", f"{container_seconds:,.1f} ({_duration(container_seconds)})"),
    ]
    if server_seconds > 0:
        rows.append(("Server container-seconds", f"{server_seconds:,.1f} ({server_cpu} CPU units / {server_memory} MB)"))
    if wall_seconds is not None:
        rows.append(("Cluster wall time", _duration(wall_seconds)))
    if scaling:
        rows.append(("Worker slots over time (adaptive)", " → ".join(f"{t:g} s: {n}" for t, n in scaling)))
    if task_counts:
        rows.append(("Tasks", ", ".join(f"{k}: {v}" for k, v in sorted(task_counts.items()))))
    label = "Estimated Fargate cost" if provider_kind == "ecs" else "Same containers on Fargate (for comparison)"
    rows.append((label, f"${total:,.4f}"))

    lines = [title, "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    lines += [
        "",
        f"_Estimate: {prices.architecture} on-demand list prices in {prices.region} "
        f"(${prices.per_vcpu_hour} per vCPU-hour, ${prices.per_gb_hour} per GB-hour, "
        f"{prices.minimum_seconds} s minimum per task; as of {prices.as_of}, {prices.source}). "
        "Storage, data transfer, public IPv4, Spot and Savings Plans are not included._",
    ]
    return "\n".join(lines) + "\n"


def publish_summary_artifact(markdown: str, flow_run_id: Optional[str], key: Optional[str] = None) -> Optional[str]:
    """Create the summary as a markdown artifact linked to `flow_run_id`; returns its id.

    Why not `create_markdown_artifact`: it links the artifact to the flow run found in the
    current FlowRunContext, and the task runner exits after Prefect has left that context, so the
    artifact would be created unlinked (or skipped). The explicit id works inside and outside it.
    """
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate
    from prefect.context import FlowRunContext

    if flow_run_id is None:
        ctx = FlowRunContext.get()
        if ctx is None or ctx.flow_run is None:
            return None
        flow_run_id = str(ctx.flow_run.id)
    artifact = ArtifactCreate(
        key=key,
        type="markdown",
        data=markdown,
        description="DockerParallel cluster summary",
        flow_run_id=UUID(str(flow_run_id)),
    )
    with get_client(sync_client=True) as client:
        return str(client.create_artifact(artifact=artifact).id)
