"""What the Prefect UI forms are built from: the block schemas, descriptions and code examples.

The browser test (tests/test_blocks_ui.py) checks how the two UIs draw and save them; these
checks pin the schema shapes that make that work, without a server.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from prefect.blocks.core import Block
from pydantic import SecretStr, ValidationError

from prefect_dockerparallel.blocks import (
    BLOCK_TYPES,
    PROVIDER_BLOCKS,
    AKSProvider,
    ClusterConfig,
    ECSFargateProvider,
    LocalProvider,
    WorkerContainer,
)
from prefect_dockerparallel.blocks._references import SELF_REF, stamp_of


def _own_properties(cls: type[Block]) -> dict[str, dict[str, Any]]:
    return cls.model_json_schema()["properties"]


@pytest.mark.parametrize("cls", BLOCK_TYPES, ids=lambda c: c.__name__)
def test_no_field_renders_as_string_or_null_tabs(cls: type[Block]) -> None:
    """`anyOf [X, null]` is drawn as two tabs; an optional field must be one plain input."""
    for name, prop in _own_properties(cls).items():
        members = prop.get("anyOf", [])
        assert not any(m.get("type") == "null" for m in members), (cls.__name__, name, prop)


@pytest.mark.parametrize("cls", PROVIDER_BLOCKS, ids=lambda c: c.__name__)
def test_the_kind_discriminator_is_no_form_field_but_still_discriminates(cls: type[Block]) -> None:
    assert "kind" not in _own_properties(cls)
    assert "kind" not in ClusterConfig.model_json_schema()["definitions"][cls.__name__]["properties"]
    kind = cls.model_fields["kind"].default
    assert type(ClusterConfig(provider={"kind": kind}).provider) is cls
    assert type(ClusterConfig(provider={"block_type_slug": cls.get_block_type_slug()}).provider) is cls


@pytest.mark.parametrize(
    "cls, field, title",
    [
        (ECSFargateProvider, "vpc_id", "VPC ID"),
        (ECSFargateProvider, "runner_cidr", "Runner CIDR"),
        (ECSFargateProvider, "aws_access_key_id", "AWS Access Key ID"),
        (ECSFargateProvider, "aws_secret_access_key", "AWS Secret Access Key"),
        (ECSFargateProvider, "region_name", "AWS Region"),
        (ECSFargateProvider, "execution_role_arn", "Execution Role ARN"),
        (ECSFargateProvider, "assign_public_ip", "Assign Public IP"),
        (ECSFargateProvider, "cpu_architecture", "CPU Architecture"),
        (AKSProvider, "source_ranges", "Source Ranges (CIDR)"),
        (AKSProvider, "azure_client_id", "Azure Client ID"),
        (AKSProvider, "arm_api_version", "ARM API Version"),
        (AKSProvider, "egress_ip_url", "Egress IP URL"),
        (WorkerContainer, "ssh_public_key", "SSH Public Key"),
        (WorkerContainer, "pip_packages", "pip Packages"),
        (ClusterConfig, "worker_cpu", "Worker CPU"),
        (ClusterConfig, "server_cpu", "Server CPU"),
    ],
)
def test_acronyms_are_titled_properly(cls: type[Block], field: str, title: str) -> None:
    assert _own_properties(cls)[field]["title"] == title


@pytest.mark.parametrize("cls", BLOCK_TYPES, ids=lambda c: c.__name__)
def test_no_title_keeps_a_lowercased_acronym(cls: type[Block]) -> None:
    bad = re.compile(r"\b(Id|Cidr|Aws|Cpu|Arn|Url|Ip|Ssh|Vpc|Aks|Ecs|Arm)\b")
    titles = {n: p.get("title", "") for n, p in _own_properties(cls).items()}
    assert not {n: t for n, t in titles.items() if bad.search(t)}, titles


@pytest.mark.parametrize("cls", [ECSFargateProvider, AKSProvider], ids=lambda c: c.__name__)
def test_secret_fields_are_password_inputs_except_multiline_ones(cls: type[Block]) -> None:
    props = _own_properties(cls)
    secrets = set(cls.model_json_schema()["secret_fields"])
    assert secrets, cls
    for name in secrets:
        assert props[name]["writeOnly"] is True, name
        expected = None if name == "kubeconfig" else "password"  # a password input drops newlines
        assert props[name].get("format") == expected, (name, props[name])
    # The API masks them, also nested in a ClusterConfig.
    nested = set(ClusterConfig.model_json_schema()["secret_fields"])
    assert {f"provider.{n}" for n in secrets} <= nested


@pytest.mark.parametrize("cls", BLOCK_TYPES, ids=lambda c: c.__name__)
def test_list_and_dict_fields_say_what_they_expect(cls: type[Block]) -> None:
    for name, prop in _own_properties(cls).items():
        if prop.get("type") in ("array", "object") and "$ref" not in str(prop):
            assert "JSON" in prop.get("description", ""), (cls.__name__, name)
            assert prop.get("examples"), (cls.__name__, name)  # the UI shows the first as a placeholder


def test_cluster_config_provider_is_a_required_choice() -> None:
    schema = ClusterConfig.model_json_schema()
    assert schema["required"] == ["provider"]
    assert "default" not in schema["properties"]["provider"]
    for missing in ({}, {"provider": None}, {"provider": {}}):
        with pytest.raises(ValidationError, match="provider") as err:
            ClusterConfig(**missing)
        if missing:
            assert "LocalProvider()" in str(err.value) and "never defaults" in str(err.value)


@pytest.mark.parametrize("cls", BLOCK_TYPES, ids=lambda c: c.__name__)
def test_code_example_renders_and_names_the_block_once(cls: type[Block]) -> None:
    example = cls.get_code_example() or ""
    # The UI replaces only the first BLOCK_NAME, and shows '>' inside code as '&gt;'.
    assert example.count("BLOCK_NAME") == 1, example
    assert not set("<>&") & set(example), example
    assert f"import {cls.__name__}" in example or f", {cls.__name__}" in example


@pytest.mark.parametrize("cls", BLOCK_TYPES, ids=lambda c: c.__name__)
def test_description_has_no_word_too_long_for_the_side_card(cls: type[Block]) -> None:
    """The block card cuts a word wider than the card (it cut `DockerParallelTaskRunner(cluster=`)."""
    description = cls.get_description() or ""
    assert description and max(len(w) for w in description.split()) <= 26, description


def test_optional_text_fields_treat_blank_as_unset() -> None:
    ecs = ECSFargateProvider(vpc_id="", aws_secret_access_key="", profile_name="  ")
    assert (ecs.vpc_id, ecs.aws_secret_access_key, ecs.profile_name) == (None, None, None)
    assert ECSFargateProvider(aws_secret_access_key="k").aws_secret_access_key == SecretStr("k")
    assert WorkerContainer(install_self="").install_self is None
    assert LocalProvider(python="").python is None


def test_stamp_in_nested_data_is_ignored_when_validating() -> None:
    data = {"region_name": "eu-west-1", **stamp_of("00000000-0000-0000-0000-000000000001")}
    config = ClusterConfig(provider=data)
    assert type(config.provider) is ECSFargateProvider and config.provider.region_name == "eu-west-1"
    assert SELF_REF not in config.provider.model_dump()
