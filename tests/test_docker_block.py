"""The DockerProvider block: validation naming the field, the ClusterConfig choice, the driver it
builds, and the runner accepting it. No engine needed."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from prefect_dockerparallel import ClusterConfig, DockerParallelTaskRunner, DockerProvider
from prefect_dockerparallel.providers.docker.driver import DockerDriver


def test_cluster_config_loads_a_docker_provider_back_by_kind_slug_or_fields() -> None:
    saved = ClusterConfig(provider=DockerProvider(docker_host="ssh://me@big-box", pull="never"), workers=8)
    again = ClusterConfig.model_validate(saved.model_dump())
    assert type(again.provider) is DockerProvider and again.provider.docker_host == "ssh://me@big-box"
    by_slug = ClusterConfig(provider={"block_type_slug": "dockerparallel-docker-provider"})
    assert type(by_slug.provider) is DockerProvider
    by_fields = ClusterConfig(provider={"docker_host": "unix:///run/user/1000/docker.sock"})
    assert type(by_fields.provider) is DockerProvider


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"docker_host": "big-box:2376"}, "docker_host: 'big-box:2376' is not an engine address"),
        ({"publish_address": "big-box"}, "publish_address: 'big-box' is not an IP address"),
        ({"pull": "sometimes"}, "pull"),
        ({"start_timeout": 0}, "start_timeout"),
    ],
)
def test_bad_fields_are_named(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DockerProvider(**fields)


def test_blank_fields_mean_the_defaults_and_the_driver_gets_the_rest() -> None:
    block = DockerProvider(docker_host=" ", server_address="", publish_address="10.0.0.5", start_timeout=30)
    driver = block.build_provider()
    assert isinstance(driver, DockerDriver) and driver.kind == "docker" and driver.is_remote
    assert driver.engine.docker_host is None and driver.server_address is None
    assert driver.publish_address == "10.0.0.5" and driver.start_timeout == 30 and driver.pull == "missing"


def test_the_runner_accepts_a_docker_provider_and_pickles_without_it() -> None:
    import pickle

    runner = DockerParallelTaskRunner(provider=DockerProvider(docker_host="tcp://10.0.0.5:2376"), workers=2)
    copy = pickle.loads(pickle.dumps(runner.payload_copy()))
    assert copy.overrides == {} and copy.cluster is None
