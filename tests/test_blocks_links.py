"""ClusterConfig documents against a real Prefect server: nested blocks saved as their own
referenced, self-stamped documents; what each Prefect UI sends on an unchanged save, replayed
over the REST API exactly as captured from the browser (tests/test_blocks_ui.py drives the real
UIs); missing providers and lost secrets failing at load with the fix."""

from __future__ import annotations

import subprocess
import sys
import uuid

import httpx
import pytest
from pydantic import SecretStr

from prefect_dockerparallel.blocks import (
    ClusterConfig,
    ECSFargateProvider,
    LocalProvider,
    WorkerContainer,
)
from prefect_dockerparallel.blocks._references import MASK, SELF_REF
from prefect_server import REPO, PrefectServer, prefect_api  # noqa: F401

CC_SLUG = "dockerparallel-cluster-config"


@pytest.fixture
def api(prefect_api: PrefectServer):  # noqa: F811
    with httpx.Client(base_url=prefect_api.api_url, timeout=10) as client:
        yield client


def _doc(api: httpx.Client, slug: str, name: str) -> dict:
    return api.get(f"/block_types/slug/{slug}/block_documents/name/{name}").raise_for_status().json()


def _v1_save(api: httpx.Client, doc: dict) -> None:
    """The Vue UI's unchanged save: block fields as references from `block_document_references`,
    other fields only where they differ from the schema default."""
    schema = doc["block_schema"]["fields"]["properties"]
    data = {}
    for key, value in doc["data"].items():
        if key in doc["block_document_references"]:
            ref_id = doc["block_document_references"][key]["block_document"]["id"]
            data[key] = {"$ref": {"block_document_id": ref_id}}
        elif key in schema and value != schema[key].get("default"):
            data[key] = value
    api.patch(f"/block_documents/{doc['id']}", json={"data": data, "merge_existing_data": False}).raise_for_status()


def _v2_save(api: httpx.Client, doc: dict) -> None:
    """The React UI's unchanged save: the data exactly as read (references inlined, secrets masked)."""
    api.patch(f"/block_documents/{doc['id']}", json={"data": doc["data"], "merge_existing_data": False}).raise_for_status()


def _ecs_config() -> ClusterConfig:
    return ClusterConfig(
        provider=ECSFargateProvider(region_name="eu-west-1", vpc_id="vpc-1", aws_secret_access_key=SecretStr("s3cr3t")),
        container=WorkerContainer(pip_packages=["numpy"], env={"A": "1"}),
        workers=3,
        tags={"team": "x"},
    )


def _secret(config: ClusterConfig) -> str:
    return config.provider.aws_secret_access_key.get_secret_value()


def test_save_references_nested_blocks_saved_as_their_own_stamped_documents(api: httpx.Client) -> None:
    name = f"ln-{uuid.uuid4().hex[:8]}"
    _ecs_config().save(name)
    doc = _doc(api, CC_SLUG, name)
    assert set(doc["block_document_references"]) == {"provider", "container"}
    names = {f: doc["block_document_references"][f]["block_document"]["name"] for f in ("provider", "container")}
    assert names == {"provider": f"{name}-provider", "container": f"{name}-container"}
    for field in ("provider", "container"):
        own_id = doc["block_document_references"][field]["block_document"]["id"]
        assert doc["data"][field][SELF_REF] == {"block_document_id": own_id}
    assert doc["data"]["provider"]["aws_secret_access_key"] == MASK
    loaded = ClusterConfig.load(name)
    assert _secret(loaded) == "s3cr3t" and loaded._unstamped == [] and loaded._embedded == []
    # The nested blocks load on their own too (the stamp is not a field).
    assert ECSFargateProvider.load(f"{name}-provider").vpc_id == "vpc-1"


@pytest.mark.parametrize("ui_save", [_v1_save, _v2_save], ids=["v1", "v2"])
def test_unchanged_ui_save_keeps_references_and_secrets(api: httpx.Client, ui_save) -> None:
    name = f"ln-{uuid.uuid4().hex[:8]}"
    config = _ecs_config()
    config.save(name)
    before = ClusterConfig.load(name).model_dump(context={"include_secrets": True})
    for _ in range(2):
        ui_save(api, _doc(api, CC_SLUG, name))
    doc = _doc(api, CC_SLUG, name)
    assert set(doc["block_document_references"]) == {"provider", "container"}
    after = ClusterConfig.load(name)
    assert after.model_dump(context={"include_secrets": True}) == before and _secret(after) == "s3cr3t"


def test_editing_a_loaded_config_writes_back_to_its_own_nested_blocks(api: httpx.Client) -> None:
    name = f"ln-{uuid.uuid4().hex[:8]}"
    _ecs_config().save(name)
    config = ClusterConfig.load(name)
    config.provider.region_name = "us-west-2"
    config.workers = 9
    config.save(overwrite=True)
    assert ECSFargateProvider.load(f"{name}-provider").region_name == "us-west-2"
    assert ClusterConfig.load(name).provider.region_name == "us-west-2"


def test_a_shared_saved_provider_is_referenced_not_copied(api: httpx.Client) -> None:
    shared = f"shared-{uuid.uuid4().hex[:8]}"
    ECSFargateProvider(region_name="ap-south-1").save(shared)
    a, b = f"ln-{uuid.uuid4().hex[:8]}", f"ln-{uuid.uuid4().hex[:8]}"
    for name in (a, b):
        ClusterConfig(provider=ECSFargateProvider.load(shared)).save(name)
    for name in (a, b):
        assert _doc(api, CC_SLUG, name)["block_document_references"]["provider"]["block_document"]["name"] == shared


def test_save_without_overwrite_refuses_before_creating_nested_blocks(api: httpx.Client) -> None:
    name = f"ln-{uuid.uuid4().hex[:8]}"
    ClusterConfig(provider=LocalProvider()).save(name)
    with pytest.raises(ValueError, match="overwrite=True"):
        ClusterConfig(provider=ECSFargateProvider()).save(name)
    with pytest.raises(ValueError):
        ECSFargateProvider.load(f"{name}-provider")


def test_ui_created_blocks_are_stamped_by_the_first_load_so_v2_keeps_them(api: httpx.Client) -> None:
    """Blocks created in a UI lack the stamp; the flow run's load adds it (runner/config.py)."""
    from prefect_dockerparallel.runner.config import load_cluster_config

    suffix = uuid.uuid4().hex[:8]
    ids = {}
    for slug, data in (
        ("dockerparallel-ecs-fargate-provider", {"region_name": "eu-west-1", "aws_secret_access_key": "s3cr3t"}),
        ("dockerparallel-worker-container", {"workers_per_container": 2}),
    ):
        ECSFargateProvider.register_type_and_schema()
        WorkerContainer.register_type_and_schema()
        ClusterConfig.register_type_and_schema()
        ids[slug] = _create(api, slug, f"ui-{suffix}-{slug[-9:]}", data)
    name = f"ui-cc-{suffix}"
    _create(
        api,
        CC_SLUG,
        name,
        {
            "provider": {"$ref": {"block_document_id": ids["dockerparallel-ecs-fargate-provider"]}},
            "container": {"$ref": {"block_document_id": ids["dockerparallel-worker-container"]}},
            "workers": 3,
        },
    )
    config = load_cluster_config(name)
    assert type(config.provider) is ECSFargateProvider and config.workers == 3
    _v2_save(api, _doc(api, CC_SLUG, name))
    assert set(_doc(api, CC_SLUG, name)["block_document_references"]) == {"provider", "container"}
    assert _secret(ClusterConfig.load(name)) == "s3cr3t"


def _create(api: httpx.Client, slug: str, name: str, data: dict) -> str:
    type_id = api.get(f"/block_types/slug/{slug}").raise_for_status().json()["id"]
    schemas = api.post("/block_schemas/filter", json={"block_schemas": {"block_type_id": {"any_": [type_id]}}})
    body = {"name": name, "block_type_id": type_id, "block_schema_id": schemas.json()[0]["id"], "data": data}
    return api.post("/block_documents/", json=body).raise_for_status().json()["id"]


def test_unstamped_reference_copied_by_v2_fails_at_load_naming_the_fix(api: httpx.Client) -> None:
    """What the V2 UI does to a reference it cannot see: a copy with the secret masked."""
    suffix = uuid.uuid4().hex[:8]
    ClusterConfig.register_type_and_schema()
    provider_id = _create(
        api, "dockerparallel-ecs-fargate-provider", f"ui-{suffix}", {"aws_secret_access_key": "s3cr3t"}
    )
    name = f"ui-cc-{suffix}"
    _create(api, CC_SLUG, name, {"provider": {"$ref": {"block_document_id": provider_id}}})
    _v2_save(api, _doc(api, CC_SLUG, name))
    with pytest.raises(ValueError, match=rf"ClusterConfig '{name}'.*aws_secret_access_key.*mask.*choose the provider block again"):
        ClusterConfig.load(name)


def test_a_document_without_provider_fails_at_load_naming_block_and_fix(api: httpx.Client) -> None:
    from prefect_dockerparallel.runner.config import load_cluster_config

    name = f"noprov-{uuid.uuid4().hex[:8]}"
    ClusterConfig.register_type_and_schema()
    _create(api, CC_SLUG, name, {"workers": 8, "tags": {"team": "data"}})  # what V1 left of ecs-example
    for load in (ClusterConfig.load, load_cluster_config):
        with pytest.raises(ValueError, match=rf"ClusterConfig '{name}' has no provider.*never defaults.*choose a provider"):
            load(name)
    with pytest.raises(ValueError, match="no saved ClusterConfig block of that name"):
        load_cluster_config(f"absent-{uuid.uuid4().hex[:8]}")


def test_embedded_documents_keep_loading_and_relink_makes_them_references(api: httpx.Client, prefect_api) -> None:  # noqa: F811
    """Documents saved by the previous version embed provider and container."""
    name = f"emb-{uuid.uuid4().hex[:8]}"
    ClusterConfig.register_type_and_schema()
    embedded = {
        "provider": {"kind": "ecs", "region_name": "eu-west-1", "aws_secret_access_key": "s3cr3t",
                     "block_type_slug": "dockerparallel-ecs-fargate-provider"},
        "container": {"image": "python:3.11", "block_type_slug": "dockerparallel-worker-container"},
        "workers": 8,
    }
    _create(api, CC_SLUG, name, embedded)
    loaded = ClusterConfig.load(name)
    assert loaded._embedded == ["provider", "container"] and _secret(loaded) == "s3cr3t"
    out = subprocess.run(
        [sys.executable, str(REPO / "blocks" / "relink.py"), name],
        env=prefect_api.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and f"{name}: relinked" in out.stdout, out.stdout + out.stderr
    assert set(_doc(api, CC_SLUG, name)["block_document_references"]) == {"provider", "container"}
    relinked = ClusterConfig.load(name)
    assert relinked._embedded == [] and _secret(relinked) == "s3cr3t" and relinked.container.image == "python:3.11"
