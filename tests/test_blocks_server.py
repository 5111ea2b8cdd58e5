"""Blocks against a real Prefect server: registration, catalog, round-trips, masked secrets,
documents created the way the UI creates them, and the two `blocks/` scripts."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from prefect.blocks.core import Block
from pydantic import SecretStr

from prefect_dockerparallel.blocks import (
    BLOCK_TYPES,
    AKSProvider,
    ClusterConfig,
    DockerProvider,
    ECSFargateProvider,
    LocalProvider,
    WorkerContainer,
)
from prefect_server import REPO, PrefectServer, prefect_api  # noqa: F401

SLUGS = {b.get_block_type_slug() for b in BLOCK_TYPES}
MASK = "*" * 8


def _catalog(server: PrefectServer) -> dict[str, dict]:
    resp = httpx.post(f"{server.api_url}/block_types/filter", json={}, timeout=10)
    resp.raise_for_status()
    return {bt["slug"]: bt for bt in resp.json()}


@pytest.fixture(scope="module")
def registered(prefect_api: PrefectServer) -> PrefectServer:  # noqa: F811
    sys.path.insert(0, str(REPO / "blocks"))
    try:
        import register  # blocks/register.py

        assert set(register.register()) == SLUGS
    finally:
        sys.path.remove(str(REPO / "blocks"))
    return prefect_api


def test_block_types_appear_in_the_catalog(registered: PrefectServer) -> None:
    catalog = _catalog(registered)
    assert SLUGS <= set(catalog), sorted(catalog)
    for slug in SLUGS:
        bt = catalog[slug]
        assert bt["description"] and bt["documentation_url"] and bt["code_example"], slug
        assert "BLOCK_NAME" in bt["code_example"]
    # The registered ClusterConfig schema: provider as `anyOf` block references (what the UI's
    # form can render), nested provider secrets declared so the API masks them.
    api = f"{registered.api_url}"
    cc_id = catalog["dockerparallel-cluster-config"]["id"]
    schemas = httpx.post(f"{api}/block_schemas/filter", json={"block_schemas": {"block_type_id": {"any_": [cc_id]}}})
    fields = schemas.raise_for_status().json()[0]["fields"]
    assert "oneOf" not in fields["properties"]["provider"] and len(fields["properties"]["provider"]["anyOf"]) == 4
    assert any(s.startswith("provider.") for s in fields["secret_fields"]), fields["secret_fields"]


def test_prefect_block_register_cli_registers_all_six(prefect_api: PrefectServer) -> None:  # noqa: F811
    out = subprocess.run(
        [str(Path(sys.executable).parent / "prefect"), "block", "register", "-m", "prefect_dockerparallel"],
        env=prefect_api.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Successfully registered 6 blocks" in out.stdout, out.stdout
    assert SLUGS <= set(_catalog(prefect_api))


@pytest.mark.parametrize(
    "block",
    [
        WorkerContainer(image="python:3.12-slim", pip_packages=["numpy"], env={"A": "1"}, workers_per_container=3),
        LocalProvider(redis_server_path="/usr/bin/redis-server"),
        ECSFargateProvider(),
        AKSProvider(),
        DockerProvider(docker_host="ssh://batch@big-box", publish_address="10.0.0.5", pull="never"),
        ClusterConfig(
            provider=LocalProvider(), workers=5, tags={"team": "risk"}, container=WorkerContainer(system_packages=["git"])
        ),
        ClusterConfig(provider=ECSFargateProvider(), worker_cpu=2048, worker_memory=4096),
        ClusterConfig(provider=AKSProvider(), idle_timeout=120),
        ClusterConfig(provider=DockerProvider(docker_host="tcp://10.0.0.5:2376", tls_cert_path="/etc/dp/tls"), workers=3),
    ],
    ids=lambda b: type(b).__name__ + "-" + getattr(getattr(b, "provider", b), "kind", "container"),
)
def test_save_load_round_trip(registered: PrefectServer, block: Block) -> None:
    name = f"rt-{uuid.uuid4().hex[:8]}"
    block.save(name)
    loaded = type(block).load(name)
    assert type(loaded) is type(block)
    assert _content(loaded) == _content(block)
    if isinstance(block, ClusterConfig):
        assert type(loaded.provider) is type(block.provider)
        assert loaded.to_spec("rt") == block.to_spec("rt")


def _content(block: Block) -> dict:
    """A block's values, secrets in clear, without Prefect's bookkeeping keys."""
    def strip(value: object) -> object:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "block_type_slug" and not k.startswith("_")}
        return value

    return strip(block.model_dump(mode="json", context={"include_secrets": True}))


def _secret_fields(cls: type[Block]) -> list[str]:
    return [n for n, f in cls.model_fields.items() if "Secret" in str(f.annotation)]


def _secret_value(cls: type[Block], field: str) -> object:
    annotation = str(cls.model_fields[field].annotation)
    return {"token": f"s3cr3t-{field}"} if "SecretDict" in annotation else SecretStr(f"s3cr3t-{field}")


def _plain(value: object) -> object:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if hasattr(value, "get_secret_value"):
        return value.get_secret_value()
    return value


def _assert_masked(data: object) -> None:
    text = repr(data)
    assert "s3cr3t" not in text, text


@pytest.mark.parametrize("cls", [ECSFargateProvider, AKSProvider], ids=lambda c: c.__name__)
def test_secrets_are_masked_by_the_api_and_load_back(registered: PrefectServer, cls: type[Block]) -> None:
    fields = _secret_fields(cls)
    assert fields, f"{cls.__name__} has no secret field"
    values = {f: _secret_value(cls, f) for f in fields}
    provider_name, cluster_name = f"sec-{uuid.uuid4().hex[:8]}", f"secc-{uuid.uuid4().hex[:8]}"
    cls(**values).save(provider_name)
    ClusterConfig(provider=cls(**values)).save(cluster_name)

    # Through the REST API the UI uses: masked, for the provider and the nested copy.
    for slug, name in ((cls.get_block_type_slug(), provider_name), ("dockerparallel-cluster-config", cluster_name)):
        resp = httpx.get(f"{registered.api_url}/block_types/slug/{slug}/block_documents/name/{name}", timeout=10)
        resp.raise_for_status()
        data = resp.json()["data"]
        _assert_masked(data)
        inner = data["provider"] if slug == "dockerparallel-cluster-config" else data
        for f in fields:
            assert MASK in repr(inner[f]), (f, inner[f])

    # Loading with the block API returns the real values.
    for loaded in (cls.load(provider_name), ClusterConfig.load(cluster_name).provider):
        assert type(loaded) is cls
        for f in fields:
            assert _plain(getattr(loaded, f)) == _plain(values[f])


def test_document_created_like_the_ui_loads_as_the_right_provider(registered: PrefectServer) -> None:
    """The UI saves a provider document, then a ClusterConfig whose `provider` is a `$ref` to it."""
    api = httpx.Client(base_url=registered.api_url, timeout=10)

    def schema_of(slug: str) -> tuple[str, str]:
        type_id = api.get(f"/block_types/slug/{slug}").raise_for_status().json()["id"]
        schemas = api.post("/block_schemas/filter", json={"block_schemas": {"block_type_id": {"any_": [type_id]}}})
        return type_id, schemas.raise_for_status().json()[0]["id"]

    def create(slug: str, name: str, data: dict) -> str:
        type_id, schema_id = schema_of(slug)
        body = {"name": name, "block_type_id": type_id, "block_schema_id": schema_id, "data": data}
        return api.post("/block_documents/", json=body).raise_for_status().json()["id"]

    suffix = uuid.uuid4().hex[:8]
    with api:
        # No `kind` in the data: an older UI form, or a user who cleared it.
        ecs_id = create("dockerparallel-ecs-fargate-provider", f"ui-ecs-{suffix}", {"region_name": "eu-west-1"})
        wc_id = create("dockerparallel-worker-container", f"ui-wc-{suffix}", {"image": "python:3.11", "workers_per_container": 2})
        create(
            "dockerparallel-cluster-config",
            f"ui-cc-{suffix}",
            {
                "provider": {"$ref": {"block_document_id": ecs_id}},
                "container": {"$ref": {"block_document_id": wc_id}},
                "workers": 3,
            },
        )
    loaded = ClusterConfig.load(f"ui-cc-{suffix}")
    assert type(loaded.provider) is ECSFargateProvider
    assert loaded.provider.kind == "ecs" and loaded.provider.region_name == "eu-west-1"
    assert loaded.workers == 3 and loaded.container.workers_per_container == 2


def test_save_examples_script_saves_four_referenced_clusters(registered: PrefectServer) -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "blocks" / "save_examples.py")],
        env=registered.env(AWS_SECRET_ACCESS_KEY="s3cr3t-example", AWS_ACCESS_KEY_ID="AKIAEXAMPLE"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    names = ("local-2", "docker-example", "ecs-example", "aks-example")
    kinds = {name: type(ClusterConfig.load(name).provider) for name in names}
    assert kinds == {
        "local-2": LocalProvider,
        "docker-example": DockerProvider,
        "ecs-example": ECSFargateProvider,
        "aks-example": AKSProvider,
    }
    for name in names:  # each nested block is a document of its own that the config references
        resp = httpx.get(f"{registered.api_url}/block_types/slug/dockerparallel-cluster-config/block_documents/name/{name}")
        refs = resp.raise_for_status().json()["block_document_references"]
        assert {f: r["block_document"]["name"] for f, r in refs.items()} == {
            "provider": f"{name}-provider",
            "container": f"{name}-container",
        }
    resp = httpx.get(
        f"{registered.api_url}/block_types/slug/dockerparallel-cluster-config/block_documents/name/ecs-example",
        timeout=10,
    )
    _assert_masked(resp.json()["data"])
