"""The end-of-run cluster summary: numbers, cost arithmetic and the documented prices."""

from __future__ import annotations

import pytest

from prefect_dockerparallel.runner.summary import (
    FARGATE_PRICES,
    cluster_summary_markdown,
    fargate_cost_usd,
)
from prefect_dockerparallel.specs import WorkerNumbers


def test_one_vcpu_two_gb_for_one_hour_costs_the_list_price() -> None:
    cost = fargate_cost_usd(3600, vcpu=1, memory_gb=2)
    assert cost == pytest.approx(0.04048 + 2 * 0.004445)


def test_minimum_billing_applies_per_started_container() -> None:
    # 3 containers that ran 5 s each are billed one minute each.
    assert fargate_cost_usd(15, 1, 2, containers=3) == pytest.approx(fargate_cost_usd(180, 1, 2))
    assert fargate_cost_usd(15, 1, 2) < fargate_cost_usd(15, 1, 2, containers=3)


def test_summary_shows_provider_workers_container_seconds_and_cost() -> None:
    md = cluster_summary_markdown(
        "ecs",
        WorkerNumbers(expected=8, running=6, initializing=2),
        container_seconds=7200,
        worker_cpu=512,
        worker_memory=1024,
        workers_per_container=4,
        containers_started=2,
        server_seconds=3600,
        cluster_name="dp-abc",
        wall_seconds=3700,
        task_counts={"completed": 100, "failed": 1},
    )
    # 2 vCPU / 4 GB containers for 2 h, plus a 0.25 vCPU / 0.5 GB server for 1 h.
    expected = 2 * (2 * 0.04048 + 4 * 0.004445) + (0.25 * 0.04048 + 0.5 * 0.004445)
    assert f"${expected:,.4f}" in md
    assert "Estimated Fargate cost" in md
    assert "| Provider | ecs |" in md
    assert "8 / 6 / 2" in md
    assert "7,200.0" in md and "2 h 00 min" in md
    assert "2 vCPU, 4 GB" in md
    assert "completed: 100" in md and "failed: 1" in md
    assert "`dp-abc`" in md
    # The prices and their date are documented in the artifact itself.
    assert str(FARGATE_PRICES.per_vcpu_hour) in md and FARGATE_PRICES.as_of in md


def test_local_summary_labels_the_fargate_figure_as_a_comparison() -> None:
    md = cluster_summary_markdown("local", (4, 4, 0), container_seconds=30.5, worker_cpu=1024, worker_memory=2048)
    assert "| Provider | local |" in md
    assert "Estimated Fargate cost" not in md
    assert "for comparison" in md
    assert "30.5 s" in md
    assert "Server container-seconds" not in md


def test_prices_are_documented_with_a_date_and_source() -> None:
    assert FARGATE_PRICES.per_vcpu_hour > 0 and FARGATE_PRICES.per_gb_hour > 0
    assert FARGATE_PRICES.as_of and FARGATE_PRICES.source.startswith("https://")


def test_summary_artifact_is_linked_to_the_flow_run_even_outside_its_context() -> None:
    """The runner exits after Prefect left the FlowRunContext: the id must be passed explicitly."""
    import uuid

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.context import get_run_context

    from prefect_dockerparallel.runner.summary import publish_summary_artifact

    @flow
    def noop() -> str:
        return str(get_run_context().flow_run.id)

    flow_run_id = noop()
    md = cluster_summary_markdown("local", (1, 1, 0), 12.0, 1024, 2048, cluster_name="dp-report")
    key = f"dockerparallel-{uuid.uuid4().hex[:8]}"
    artifact_id = publish_summary_artifact(md, flow_run_id, key=key)
    assert artifact_id
    assert publish_summary_artifact(md, None) is None  # no context, no id: nothing to link to
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(flow_run_id)]))
        )
    assert [(a.key, a.type, a.data) for a in found] == [(key, "markdown", md)]


def test_ecs_worker_tasks_are_priced_at_the_rounded_up_fargate_size() -> None:
    # 3 slots of 512 CPU / 1024 MB = 1536 / 3072: Fargate runs it as 2048 / 4096.
    md = cluster_summary_markdown("ecs", (3, 3, 0), 3600, 512, 1024, workers_per_container=3)
    assert "2 vCPU, 4 GB" in md
    assert f"${2 * 0.04048 + 4 * 0.004445:,.4f}" in md
