"""The ECSFargateProvider block: fields documented, secrets as SecretStr, mapped 1:1 onto the
driver's plain settings; and egress-IP detection for the Redis ingress rule."""

from __future__ import annotations

import http.server
import pickle
import sys
import threading
from collections.abc import Iterator

import pytest
from pydantic import SecretStr, ValidationError

from prefect_dockerparallel.blocks.ecs import ECSFargateProvider
from prefect_dockerparallel.providers.base import ProviderError
from prefect_dockerparallel.providers.ecs.settings import EcsSettings


def test_every_field_is_described_and_credentials_are_secret() -> None:
    for name, info in ECSFargateProvider.model_fields.items():
        if name != "block_type_slug":
            assert info.description, f"{name} has no description"
    for name in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token"):
        assert "SecretStr" in str(ECSFargateProvider.model_fields[name].annotation), name
    assert ECSFargateProvider().kind == "ecs"


def test_block_fields_map_onto_driver_settings() -> None:
    block_fields = set(ECSFargateProvider.model_fields) - {"kind", "block_type_slug"}
    # Every block field reaches the driver; driver-only knobs are test/tuning hooks.
    assert block_fields <= set(EcsSettings.__dataclass_fields__)
    block = ECSFargateProvider(
        region_name="eu-west-1",
        cluster_name="nightly",
        subnet_id="subnet-1",
        aws_access_key_id=SecretStr("AKIAEXAMPLE"),
        aws_secret_access_key=SecretStr("s3cr3t"),
        runner_cidr="198.51.100.4",
        spot_workers=True,
        redis_port=7000,
    )
    driver = block.build_provider()
    cfg = driver.cfg  # type: ignore[attr-defined]
    assert (cfg.region_name, cfg.cluster_name, cfg.subnet_id, cfg.redis_port) == (
        "eu-west-1",
        "nightly",
        "subnet-1",
        7000,
    )
    assert cfg.aws_secret_access_key == "s3cr3t" and cfg.aws_access_key_id == "AKIAEXAMPLE"
    assert (
        cfg.runner_cidr == "198.51.100.4/32"
        and cfg.spot_workers
        and cfg.log_group == "/dockerparallel/nightly"
    )
    assert driver.kind == "ecs" and driver.is_remote
    for text in (repr(block), repr(driver), block.model_dump_json()):
        assert "s3cr3t" not in text and "AKIAEXAMPLE" not in text
    assert b"s3cr3t" not in pickle.dumps(driver)


def test_block_rejects_wide_open_ingress_and_bad_values() -> None:
    with pytest.raises(ValidationError, match="whole internet"):
        ECSFargateProvider(runner_cidr="0.0.0.0/0")
    with pytest.raises(ValidationError):
        ECSFargateProvider(cpu_architecture="SPARC")
    with pytest.raises(ValueError, match="Spot does not run ARM64"):
        ECSFargateProvider(spot_workers=True, cpu_architecture="ARM64").build_provider()


def test_importing_the_block_does_not_import_boto3() -> None:
    import subprocess

    code = (
        "import sys; from prefect_dockerparallel.blocks.ecs import ECSFargateProvider; "
        "ECSFargateProvider(runner_cidr='1.2.3.4'); print('boto3' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "False"


@pytest.fixture
def ip_echo() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"198.51.100.23\n")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_egress_ip_is_detected_as_a_slash_32(ip_echo: str) -> None:
    from prefect_dockerparallel.providers.ecs.network import detect_egress_cidr

    assert detect_egress_cidr(ip_echo) == "198.51.100.23/32"
    with pytest.raises(ProviderError, match="set runner_cidr"):
        detect_egress_cidr("http://127.0.0.1:1/", timeout=2)
