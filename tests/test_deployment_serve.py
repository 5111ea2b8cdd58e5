"""Scheduled deployments: `flows/serve_nightly.py` served in a subprocess runs on its schedule,
on the local cluster named by the saved ClusterConfig "nightly"; `flows/prefect.yaml` deploys."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
)
from prefect.client.schemas.objects import StateType

from helpers import cluster_processes, wait_until
from prefect_dockerparallel import ClusterConfig, LocalProvider, WorkerContainer
from prefect_server import REPO, PrefectServer

FLOWS = REPO / "flows"
PREFECT = str(Path(sys.executable).parent / "prefect")


def _runs(deployment_id: uuid.UUID) -> list:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            flow_run_filter=FlowRunFilter(),
        )


def _deployment_id(name: str) -> uuid.UUID | None:
    with get_client(sync_client=True) as client:
        try:
            return client.read_deployment_by_name(name).id
        except Exception:  # noqa: BLE001 - not registered yet
            return None


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the serve process group, then SIGKILL whatever is left."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


def test_served_deployment_runs_on_its_schedule_on_the_local_cluster(
    prefect_server_session: PrefectServer, tmp_path: Path
) -> None:
    ClusterConfig(
        provider=LocalProvider(),
        container=WorkerContainer(install_self=None, workers_per_container=1),
        workers=2,
        idle_timeout=10,
    ).save("nightly", overwrite=True)
    name = f"serve-{uuid.uuid4().hex[:6]}"
    before = {p.pid for p in cluster_processes()}
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, str(FLOWS / "serve_nightly.py"), "--name", name, "--interval", "3600", "--first-run-in", "3", "--paths", "200"],
        cwd=REPO,
        env=prefect_server_session.env(PREFECT_RUNNER_POLL_FREQUENCY="1"),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # one process group: the serve runner and its flow-run subprocesses
    )
    try:
        deployment_id = wait_until(lambda: _deployment_id(f"nightly-sweep/{name}"), timeout=60, interval=0.5)
        assert deployment_id, f"deployment never registered:\n{(tmp_path / 'serve.log').read_text()[-3000:]}"
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment(deployment_id)
        assert deployment.schedules and deployment.schedules[0].schedule.interval.total_seconds() == 3600

        final = (StateType.COMPLETED, StateType.FAILED, StateType.CRASHED)

        def finished() -> list:
            return [r for r in _runs(deployment_id) if r.state_type in final]

        ended = wait_until(finished, timeout=150, interval=1)
        states = sorted({r.state_name for r in _runs(deployment_id)})
        serve_log = (tmp_path / "serve.log").read_text()[-4000:]
        assert ended, f"no run finished; states: {states}\n{serve_log}"
        # The first run to end must have completed: none failed or crashed.
        assert {r.state_type for r in ended} == {StateType.COMPLETED}, f"{states}\n{serve_log}"
        run = ended[0]
        assert run.auto_scheduled, "the run must come from the schedule, not a manual trigger"
        assert run.parameters == {"paths": 200}
        # It ran on the local cluster: the run's cluster summary artifact says so. The runner
        # publishes it at teardown, which Prefect runs after it has set the final state, so poll.
        def summaries() -> list[str]:
            with get_client(sync_client=True) as client:
                artifacts = client.read_artifacts(
                    artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
                )
            return [str(a.data) for a in artifacts if "DockerParallel cluster" in str(a.data)]

        found = wait_until(summaries, timeout=60, interval=0.5)
        serve_log = (tmp_path / "serve.log").read_text()[-4000:]
        assert found and "| Provider | local |" in found[0], f"summaries: {found}\n{serve_log}"
        # Stop further runs, let any in flight finish, then stop the server process.
        with get_client(sync_client=True) as client:
            client.pause_deployment(deployment_id)
        wait_until(
            lambda: not [r for r in _runs(deployment_id) if r.state_type in (StateType.RUNNING, StateType.PENDING)],
            timeout=90,
            interval=1,
        )
    finally:
        _stop(proc)
        log.close()
    # Nothing left: no serve process, no worker, no redis-server of any run's cluster.
    leftovers = wait_until(lambda: not [p for p in cluster_processes() if p.pid not in before], timeout=30)
    assert leftovers, [(p.pid, p.cmdline()) for p in cluster_processes() if p.pid not in before]
    assert proc.poll() is not None


def test_prefect_yaml_deploys_a_scheduled_deployment_bound_to_a_cluster_block(
    prefect_server_session: PrefectServer, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(FLOWS / "prefect.yaml", project / "prefect.yaml")
    shutil.copy(FLOWS / "sweep.py", project / "sweep.py")
    spec = yaml.safe_load((project / "prefect.yaml").read_text())
    pool = spec["deployments"][0]["work_pool"]["name"]
    env = prefect_server_session.env()
    subprocess.run([PREFECT, "work-pool", "create", pool, "--type", "process", "--overwrite"],
                   env=env, cwd=project, check=True, capture_output=True, timeout=120)
    out = subprocess.run([PREFECT, "--no-prompt", "deploy", "--all"], env=env, cwd=project,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr

    with get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("nightly-sweep/nightly")
        weekly = client.read_deployment_by_name("sweep/weekly-from-setting")
    assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]
    assert nightly.schedules[0].active and nightly.work_pool_name == pool
    assert [s.schedule.cron for s in weekly.schedules] == ["0 3 * * 0"]
    assert weekly.job_variables["env"]["PREFECT_INTEGRATIONS_DOCKERPARALLEL_CLUSTER"] == "nightly"

    # The deployed flow's runner names the block: loading the entrypoint gives cluster="nightly".
    from prefect.flows import load_flow_from_entrypoint

    flow = load_flow_from_entrypoint(str(project / nightly.entrypoint))
    assert flow.task_runner.cluster == "nightly"
