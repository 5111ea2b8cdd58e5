"""Issue 17, findings 1, 5 and 6: the local provider's state directory and files as an attacker
on the same machine sees them (another uid, a planted file, a reused PID, a dead driver)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from helpers import wait_until
from prefect_dockerparallel import cli
from prefect_dockerparallel.providers import local_state
from prefect_dockerparallel.providers.local import LocalDriver
from prefect_dockerparallel.providers.local_state import StateDirError, identity, state_dir
from prefect_dockerparallel.specs import ClusterSecrets, ClusterSpec

OTHER_UID = 4242


@pytest.fixture
def shared_root(monkeypatch):
    """A world-writable sticky directory like /tmp, used as the state root for this test."""
    root = Path(tempfile.mkdtemp(prefix="dp-shared-", dir="/tmp"))
    root.chmod(0o1777)
    monkeypatch.setenv("DOCKERPARALLEL_STATE_DIR", str(root))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def private_root(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKERPARALLEL_STATE_DIR", str(tmp_path))
    return state_dir()


def as_other_user(*cmd: str) -> None:
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is needed to act as another uid")
    if os.geteuid() != 0:
        pytest.skip("acting as another uid needs root (setpriv --reuid)")
    subprocess.run(["setpriv", f"--reuid={OTHER_UID}", f"--regid={OTHER_UID}", "--clear-groups", *cmd], check=True)


def test_directory_pre_created_by_another_user_is_refused(shared_root):
    """Finding 1: the attacker creates the state directory first (0777) and plants a state file."""
    target = shared_root / f"prefect-dockerparallel-{os.getuid()}"
    as_other_user("mkdir", "-m", "0777", str(target))
    as_other_user("sh", "-c", f"umask 0; : > {target}/victim.json")
    assert os.stat(target).st_uid == OTHER_UID
    with pytest.raises(StateDirError) as info:
        state_dir()
    message = str(info.value)
    assert str(target) in message and f"uid {OTHER_UID}" in message and "DOCKERPARALLEL_STATE_DIR" in message
    # The runner fails before anything starts: no secret reaches the planted file.
    driver = LocalDriver()
    with pytest.raises(StateDirError):
        driver.start_server(ClusterSpec(name="victim"), ClusterSecrets.generate())
    assert (target / "victim.json").read_bytes() == b""


def test_own_directory_open_to_others_is_refused_with_the_fix(shared_root):
    target = shared_root / f"prefect-dockerparallel-{os.getuid()}"
    target.mkdir()
    target.chmod(0o755)
    with pytest.raises(StateDirError, match=rf"mode 0755.*chmod 700 {target}"):
        state_dir()
    target.chmod(0o700)
    assert state_dir() == target


def test_symlinked_directory_is_refused(shared_root, tmp_path):
    (shared_root / f"prefect-dockerparallel-{os.getuid()}").symlink_to(tmp_path)
    with pytest.raises(StateDirError, match="not a plain directory"):
        state_dir()


def test_state_files_are_0600_created_exclusively_and_never_follow_a_symlink(private_root, tmp_path):
    decoy = tmp_path / "decoy"
    decoy.write_text("")
    link = private_root / "c1.json"
    link.symlink_to(decoy)
    local_state.write_state(link, {"signing_key": "s3cret"})
    assert decoy.read_text() == "" and not link.is_symlink()  # replaced, not followed
    assert stat.S_IMODE(link.stat().st_mode) == 0o600
    assert local_state.read_state(link) == {"signing_key": "s3cret"}
    log = private_root / "c1.log"
    log.symlink_to(decoy)
    with pytest.raises(OSError):
        local_state.open_log(log)
    assert stat.S_IMODE(private_root.stat().st_mode) == 0o700


def _fake_state(root: Path, name: str, **fields) -> Path:
    path = root / f"{name}.json"
    data = {"name": name, "port": 1, "redis_password": "pw", "signing_key": "00" * 32, **fields}
    local_state.write_state(path, data)
    return path


def test_dead_cluster_state_is_swept_when_a_cluster_starts(private_root, no_leftover_processes):
    """Finding 6: a SIGKILLed driver left its state file (both secrets) behind."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    proof = identity(gone.pid)
    gone.wait()
    dead = _fake_state(private_root, "dead-one", server_pid=gone.pid, server_proc=proof)
    (private_root / "dead-one.log").write_text("last words\n")
    driver = LocalDriver()
    spec = ClusterSpec(name="sweeper")
    driver.start_server(spec, ClusterSecrets.generate())
    try:
        assert not dead.exists()
        assert (private_root / "dead-one.log").exists()  # logs stay until `clusters cleanup`
        assert (private_root / "sweeper.json").exists()
        assert stat.S_IMODE((private_root / "sweeper.json").stat().st_mode) == 0o600
    finally:
        driver.stop(spec)
    assert not (private_root / "sweeper.json").exists()


def test_server_that_fails_to_start_leaves_no_secrets(private_root, tmp_path, no_leftover_processes):
    broken = tmp_path / "redis-server"
    broken.write_text("#!/bin/sh\nexit 7\n")
    broken.chmod(0o755)
    driver = LocalDriver(redis_server_path=str(broken))
    with pytest.raises(Exception, match="exited"):
        driver.start_server(ClusterSpec(name="broken"), ClusterSecrets.generate())
    assert not (private_root / "broken.json").exists()


def test_cleanup_never_signals_a_reused_pid(private_root, capsys):
    """Finding 5: the recorded PIDs now belong to an unrelated process, which must stay alive."""
    bystander = subprocess.Popen(["sleep", "120"])
    mine = subprocess.Popen(["sleep", "120"])
    try:
        assert wait_until(lambda: (identity(bystander.pid) or {}).get("cmdline"), 5)
        real = identity(bystander.pid)
        # an old-format file (bare PIDs), and a new one whose start time no longer matches
        _fake_state(private_root, "stale-old", server_pid=bystander.pid, worker_pids=[bystander.pid])
        _fake_state(private_root, "stale-new", server_proc={**real, "start": real["start"] - 1},
                    worker_procs=[{**real, "cmdline": [sys.executable, "-m", "x"]}])
        _fake_state(private_root, "proven", worker_procs=[{**identity(mine.pid), "cmdline": ["sleep", "120"]}])
        assert cli.main(["clusters", "cleanup"]) == 0
        out = capsys.readouterr().out
        assert "removed 0 resources of stale-old" in out and "removed 0 resources of stale-new" in out
        assert f"pid:{mine.pid}" in out
        assert bystander.poll() is None  # left alive
        assert wait_until(lambda: mine.poll() is not None, 10)  # proven to be the cluster's: stopped
        assert not list(private_root.glob("*.json"))  # the secrets are gone in every case
    finally:
        for proc in (bystander, mine):
            proc.kill()
            proc.wait()
