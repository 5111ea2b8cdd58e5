"""Azure AD client-credentials tokens and AKS kubeconfig fetch over the ARM REST API (httpx).

Why not the Azure SDK: two POST requests do not justify azure-identity + azure-mgmt-containerservice
(and their transitive pins) in every Prefect process. Secrets never appear in an exception message:
errors quote Azure's error code and description, never the request body.
"""

from __future__ import annotations

import base64
import email.utils
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx

from ..base import ProviderError

ARM_SCOPE = "https://management.azure.com/.default"
# Well-known application id of the AKS AAD server (the audience kubelogin asks tokens for).
AKS_AAD_SERVER_APP_ID = "6dae42f8-4368-4678-94ff-3960e28e3630"
AKS_SCOPE = f"{AKS_AAD_SERVER_APP_ID}/.default"
DEFAULT_API_VERSION = "2024-05-01"
RETRY_STATUSES = {429, 500, 502, 503, 504}


@dataclass(frozen=True)
class AzureCredentials:
    """A service principal and the AKS cluster it may read credentials of (plain values)."""

    tenant_id: str
    client_id: str
    client_secret: str = field(repr=False)
    subscription_id: str
    resource_group: str
    cluster_name: str
    api_version: str = DEFAULT_API_VERSION
    authority_host: str = "https://login.microsoftonline.com"
    arm_endpoint: str = "https://management.azure.com"
    admin: bool = False  # listClusterAdminCredential instead of listClusterUserCredential


@dataclass(frozen=True)
class AccessToken:
    token: str = field(repr=False)
    expires_at: float  # time.time() seconds

    def fresh(self, margin: float = 300.0) -> bool:
        return time.time() + margin < self.expires_at


class AzureClient:
    """Fetches tokens and kubeconfigs; retries throttling (429, honouring Retry-After) and 5xx."""

    def __init__(
        self,
        creds: AzureCredentials,
        *,
        max_attempts: int = 5,
        max_wait: float = 60.0,
        timeout: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.creds = creds
        self.max_attempts = max_attempts
        self.max_wait = max_wait
        self.sleep = sleep
        self._http = httpx.Client(timeout=timeout, transport=transport)
        self._tokens: dict[str, AccessToken] = {}

    def close(self) -> None:
        self._http.close()

    # -- AAD -------------------------------------------------------------------------------
    def token(self, scope: str = ARM_SCOPE) -> AccessToken:
        """A client-credentials token for `scope`, cached until 5 minutes before it expires."""
        cached = self._tokens.get(scope)
        if cached and cached.fresh():
            return cached
        c = self.creds
        url = f"{c.authority_host.rstrip('/')}/{c.tenant_id}/oauth2/v2.0/token"
        data = {
            "grant_type": "client_credentials",
            "client_id": c.client_id,
            "client_secret": c.client_secret,
            "scope": scope,
        }
        body = self._request("POST", url, what="Azure AD token request", data=data)
        try:
            tok = AccessToken(body["access_token"], time.time() + float(body.get("expires_in", 3600)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProviderError("Azure AD token response has no access_token") from exc
        self._tokens[scope] = tok
        return tok

    # -- ARM -------------------------------------------------------------------------------
    def kubeconfig(self) -> str:
        """The AKS cluster's kubeconfig (YAML text) from listClusterUserCredential."""
        c = self.creds
        action = "listClusterAdminCredential" if c.admin else "listClusterUserCredential"
        url = (
            f"{c.arm_endpoint.rstrip('/')}/subscriptions/{c.subscription_id}/resourceGroups/"
            f"{c.resource_group}/providers/Microsoft.ContainerService/managedClusters/"
            f"{c.cluster_name}/{action}"
        )
        headers = {"Authorization": f"Bearer {self.token(ARM_SCOPE).token}"}
        body = self._request(
            "POST", url, what=f"ARM {action}", params={"api-version": c.api_version}, headers=headers
        )
        configs = body.get("kubeconfigs") or []
        if not configs or "value" not in configs[0]:
            raise ProviderError(f"ARM {action} returned no kubeconfig for cluster {c.cluster_name!r}")
        return base64.b64decode(configs[0]["value"]).decode()

    # -- plumbing --------------------------------------------------------------------------
    def _request(self, method: str, url: str, *, what: str, **kwargs: Any) -> dict[str, Any]:
        delay = 1.0
        for attempt in range(1, self.max_attempts + 1):
            try:
                resp = self._http.request(method, url, **kwargs)
            except httpx.HTTPError as exc:
                if attempt == self.max_attempts:
                    raise ProviderError(f"{what} failed: {type(exc).__name__} reaching {_host(url)}") from None
                self.sleep(min(delay, self.max_wait))
                delay *= 2
                continue
            if resp.status_code in RETRY_STATUSES and attempt < self.max_attempts:
                wait = _retry_after(resp.headers.get("Retry-After"))
                self.sleep(min(wait if wait is not None else delay, self.max_wait))
                delay *= 2
                continue
            if resp.status_code >= 400:
                raise ProviderError(_error_message(what, resp))
            try:
                return resp.json()
            except ValueError:
                raise ProviderError(f"{what} returned a non-JSON body (HTTP {resp.status_code})") from None
        raise AssertionError("unreachable")


def _host(url: str) -> str:
    return httpx.URL(url).host


def _retry_after(value: str | None) -> float | None:
    """Retry-After is delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_message(what: str, resp: httpx.Response) -> str:
    """Azure's error code/description, and the fix for the usual causes; never the request."""
    code, desc = "", ""
    try:
        body = resp.json()
        if isinstance(body.get("error"), dict):  # ARM shape
            code, desc = body["error"].get("code", ""), body["error"].get("message", "")
        else:  # AAD shape
            code, desc = body.get("error", ""), body.get("error_description", "")
    except (ValueError, AttributeError):
        pass
    desc = desc.splitlines()[0] if desc else ""
    msg = f"{what} failed with HTTP {resp.status_code}"
    if code or desc:
        msg += f": {code} {desc}".rstrip()
    if resp.status_code in (400, 401):
        msg += (
            ". Check tenant_id, client_id and client_secret of the service principal "
            "(an expired client secret is the usual cause)"
        )
    elif resp.status_code == 403:
        msg += (
            ". Grant the service principal the 'Azure Kubernetes Service Cluster User Role' "
            "on the AKS cluster"
        )
    elif resp.status_code == 404:
        msg += ". Check subscription_id, resource_group and cluster_name"
    return msg
