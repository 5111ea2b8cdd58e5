"""`prefect-dockerparallel clusters ls|cleanup --provider docker`, `logs`, and the dead-man's switch
with a SIGKILLed flow runner: nothing of the cluster is left on the engine."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import psutil

from containers import docker_engine, docker_tracker, test_images  # noqa: F401
from docker_support import cluster_objects, container_api, dev_worker_image, docker_cluster_kwargs  # noqa: F401
from helpers import wait_until

from prefect_dockerparallel import DockerCluster, DockerProvider, cli

NOTHING = {"containers": [], "networks": [], "volumes": []}


def test_ls_logs_and_cleanup_of_a_dead_cluster(docker_engine, docker_tracker, dev_worker_image, capsys):
    kwargs = docker_cluster_kwargs(docker_tracker, dev_worker_image)
    live = DockerCluster(workers=0, idle_timeout=30, **kwargs)
    dead = DockerCluster(workers=1, idle_timeout=30, stop_on_exit=False, **kwargs)
    try:
        live.start()
        dead.start()
        assert wait_until(lambda: dead.worker_numbers().running == 1, 90)
        dead.disconnect()  # its flow runner is gone ...
        docker_engine.containers.get(f"dp-{dead.name}-server").kill()  # ... and its server stopped
        DockerProvider().save("docker-cli-test", overwrite=True)

        assert cli.main(["clusters", "ls", "--provider", "docker", "--block", "docker-cli-test"]) == 0
        listed = {line.split("\t")[0]: line.split("\t") for line in capsys.readouterr().out.splitlines()}
        assert listed[live.name][1:3] == ["docker", "alive"] and listed[dead.name][1:3] == ["docker", "dead"]
        assert listed[dead.name][4] == "3 resources"  # the server and worker containers, the network

        assert cli.main(["logs", dead.name, "--provider", "docker"]) == 0
        out = capsys.readouterr().out
        assert f"==> dp-{dead.name}-server (exited) <==" in out and "redis-server ready" in out
        assert f"joined cluster {dead.name}" in out

        assert cli.main(["clusters", "cleanup", "--provider", "docker", "--name", dead.name]) == 0
        out = capsys.readouterr().out
        assert f"removed 3 resources of {dead.name}" in out and f"network/dp-{dead.name}" in out
        assert cluster_objects(docker_engine, dead.name) == NOTHING
        assert cluster_objects(docker_engine, live.name)["containers"] == [f"dp-{live.name}-server"]
        assert cli.main(["clusters", "ls", "--provider", "docker"]) == 0
        assert dead.name not in capsys.readouterr().out
    finally:
        live.stop()
        dead.driver.cleanup(dead.name)
    assert cluster_objects(docker_engine, live.name) == NOTHING


DRIVER = textwrap.dedent(
    """
    import sys, time
    from prefect import flow, task
    from prefect.context import FlowRunContext
    from prefect_dockerparallel import DockerParallelTaskRunner, DockerProvider, WorkerContainer

    @task
    def forever(x):
        print("STARTED", x, flush=True)
        time.sleep(600)

    runner = DockerParallelTaskRunner(
        provider=DockerProvider(), workers=1, idle_timeout=10, tags={"dp-test-owner": sys.argv[2]},
        container=WorkerContainer(image=sys.argv[1], install_self="", workers_per_container=1))

    @flow(task_runner=runner)
    def stuck():
        future = forever.submit(1)
        print("CLUSTER", FlowRunContext.get().task_runner.docker_cluster.name, flush=True)
        future.wait()

    stuck()
    """
)


def test_a_sigkilled_flow_runner_leaves_nothing_on_the_engine(
    docker_engine, docker_tracker, dev_worker_image, container_api, tmp_path
):
    """Workers and server stop by themselves (dead-man's switch) and the janitor removes their
    containers and the network: nothing of the cluster is left, without any cleanup command."""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    driver = subprocess.Popen(
        [sys.executable, str(script), dev_worker_image, docker_tracker.owner],
        env=container_api.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(driver.stdout.readline, "")), daemon=True).start()
    try:
        assert wait_until(lambda: any(line.startswith("CLUSTER ") for line in lines), 120), "".join(lines)
        name = next(line.split()[1] for line in lines if line.startswith("CLUSTER "))

        def task_started() -> bool:
            workers = docker_engine.containers.list(
                filters={"label": [f"dockerparallel-cluster={name}", "dockerparallel-role=worker"]})
            return any(b"STARTED 1" in w.logs() for w in workers)

        assert wait_until(task_started, 120), cluster_objects(docker_engine, name)
        janitors = [p for p in psutil.process_iter(["cmdline"])
                    if "docker.janitor" in " ".join(p.info["cmdline"] or []) and name in " ".join(p.info["cmdline"])]
        assert len(janitors) == 1
        driver.kill()
        driver.wait(10)
        # idle_timeout 10 s, the server's 3 s for workers to notice, the janitor's 2 s poll
        assert wait_until(lambda: cluster_objects(docker_engine, name) == NOTHING, 60, interval=0.5), (
            cluster_objects(docker_engine, name))
        assert wait_until(lambda: not janitors[0].is_running(), 10)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
