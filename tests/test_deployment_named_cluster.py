"""A flow whose runner names a saved ClusterConfig: it runs on that cluster, picks up an edit of
the block on the next run with no code change, works in async flows, follows the
PREFECT_INTEGRATIONS_DOCKERPARALLEL_CLUSTER setting, and publishes the summary artifact."""

from __future__ import annotations

import os
import sys
import uuid

import cloudpickle
import pytest
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.context import get_run_context

from prefect_dockerparallel import ClusterConfig, DockerParallelTaskRunner, LocalProvider, WorkerContainer
from prefect_dockerparallel.settings import CLUSTER_ENV_VAR, default_cluster_block_name
from prefect_server import PrefectServer

# Workers cannot import this test module: ship its tasks by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.usefixtures("no_leftover_processes")


@task
def where(i: int) -> tuple[str, str, int]:
    """Which configuration the worker container that ran this task was started with: its env
    mark, and its slot count (a container with n > 1 slots runs each slot as a child process)."""
    import psutil

    slots = os.environ.get("DOCKERPARALLEL_SLOTS", "")
    parent_slots = psutil.Process(os.getppid()).environ().get("DOCKERPARALLEL_SLOTS")
    return os.environ.get("SWEEP_MARK", ""), parent_slots or slots, os.getpid()


def _save(name: str, mark: str, workers: int = 2, per_container: int = 1) -> None:
    ClusterConfig(
        provider=LocalProvider(),
        container=WorkerContainer(env={"SWEEP_MARK": mark}, workers_per_container=per_container, install_self=None),
        workers=workers,
        idle_timeout=15,
    ).save(name, overwrite=True)


def _flow_for(runner: DockerParallelTaskRunner):
    @flow(task_runner=runner)
    def marks(n: int = 6) -> tuple[list[tuple[str, str, int]], str]:
        return where.map(range(n)).result(), str(get_run_context().flow_run.id)

    return marks


def _artifact_markdown(flow_run_id: str) -> str:
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(flow_run_id)]))
        )
    summaries = [a.data for a in artifacts if a.type == "markdown" and "DockerParallel cluster" in str(a.data)]
    assert summaries, f"no cluster summary artifact on flow run {flow_run_id}: {artifacts}"
    return summaries[0]


def test_named_block_runs_and_an_edit_applies_to_the_next_run(prefect_server_session: PrefectServer) -> None:
    name = f"edit-{uuid.uuid4().hex[:8]}"
    _save(name, mark="v1", workers=2, per_container=1)
    marks = _flow_for(DockerParallelTaskRunner(cluster=name))

    rows, _ = marks()
    assert {mark for mark, _, _ in rows} == {"v1"}
    assert {slots for _, slots, _ in rows} == {"1"}

    # Edit the saved block (what a user does in the UI); same flow object, no code change.
    _save(name, mark="v2", workers=2, per_container=2)
    rows, _ = marks()
    assert {mark for mark, _, _ in rows} == {"v2"}
    assert {slots for _, slots, _ in rows} == {"2"}


def test_each_run_publishes_a_cluster_summary_artifact(prefect_server_session: PrefectServer) -> None:
    name = f"summary-{uuid.uuid4().hex[:8]}"
    _save(name, mark="s", workers=2)
    _, flow_run_id = _flow_for(DockerParallelTaskRunner(cluster=name))(n=2)
    summary = _artifact_markdown(flow_run_id)
    assert "| Provider | local |" in summary
    assert "| Workers (expected / running / initializing) | 2 / " in summary
    assert "container-seconds" in summary and "Fargate" in summary


def test_named_block_in_an_async_flow(prefect_server_session: PrefectServer) -> None:
    import asyncio

    name = f"async-{uuid.uuid4().hex[:8]}"
    _save(name, mark="async", workers=1)

    @flow(task_runner=DockerParallelTaskRunner(cluster=name))
    async def async_marks() -> list[str]:
        futures = where.map(range(3))
        return [mark for mark, _, _ in futures.result()]

    assert asyncio.run(async_marks()) == ["async"] * 3


def test_setting_names_the_default_cluster(prefect_server_session: PrefectServer, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"setting-{uuid.uuid4().hex[:8]}"
    _save(name, mark="from-setting", workers=1)
    monkeypatch.setenv(CLUSTER_ENV_VAR, name)
    assert default_cluster_block_name() == name
    rows, _ = _flow_for(DockerParallelTaskRunner())(n=2)
    assert {mark for mark, _, _ in rows} == {"from-setting"}


def test_a_missing_block_fails_with_its_name(prefect_server_session: PrefectServer) -> None:
    marks = _flow_for(DockerParallelTaskRunner(cluster="no-such-cluster-block"))
    with pytest.raises(ValueError, match="no-such-cluster-block"):
        marks(n=1)


def test_setting_is_unset_or_blank_means_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CLUSTER_ENV_VAR, raising=False)
    assert default_cluster_block_name() is None
    monkeypatch.setenv(CLUSTER_ENV_VAR, "  ")
    assert default_cluster_block_name() is None


def test_runner_pickles_the_block_name_only() -> None:
    """What travels in task payloads is `payload_copy()`: the block name, no configuration."""
    runner = DockerParallelTaskRunner(cluster="nightly")
    clone = cloudpickle.loads(cloudpickle.dumps(runner.payload_copy()))
    assert clone.cluster == "nightly"
    secret_runner = DockerParallelTaskRunner(cluster=ClusterConfig(provider=LocalProvider(), workers=1))
    assert b"LocalProvider" not in cloudpickle.dumps(secret_runner.payload_copy())
