"""Building a kubernetes ApiClient from a kubeconfig, in-cluster config or an Azure principal.

Why a module of its own: the failure modes of cluster access (an exec plugin such as kubelogin
or gke-gcloud-auth-plugin missing on the flow runner's machine, an AAD-enabled AKS cluster) must be
found before anything is created, and named with their fix.
"""

from __future__ import annotations

import copy
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any

import yaml

from .azure import AKS_SCOPE, AzureClient, AzureCredentials
from ..base import ProviderError

PLUGIN_FIXES = {
    "kubelogin": (
        "install kubelogin (`az aks install-cli`) on the machine that runs the flow, or give the "
        "AKSProvider Azure service principal fields so it fetches a token itself, or run "
        "`kubelogin convert-kubeconfig -l spn` and store the converted kubeconfig"
    ),
    "gke-gcloud-auth-plugin": (
        "install it (`gcloud components install gke-gcloud-auth-plugin`) on the machine that "
        "runs the flow, or store a kubeconfig with a service-account token"
    ),
    "aws": "install the AWS CLI v2 on the machine that runs the flow, or use aws-iam-authenticator",
    "aws-iam-authenticator": "install aws-iam-authenticator on the machine that runs the flow",
}


@dataclass
class Access:
    """A ready ApiClient, and when its credentials expire (None: never / refreshed by the client)."""

    api_client: Any
    expires_at: float | None = None

    def fresh(self, margin: float = 300.0) -> bool:
        return self.expires_at is None or time.time() + margin < self.expires_at


def read_default_kubeconfig() -> str:
    """The kubeconfig kubectl would use: first file of $KUBECONFIG, else ~/.kube/config."""
    paths = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    path = os.path.expanduser(paths[0] if paths else "~/.kube/config")
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        raise ProviderError(
            f"no Kubernetes access configured and no kubeconfig at {path}: give AKSProvider a "
            "kubeconfig, in_cluster=True, or Azure service principal fields"
        ) from None


def parse_kubeconfig(text: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(text, dict):
        return copy.deepcopy(text)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProviderError(f"kubeconfig is not valid YAML: {exc.__class__.__name__}") from None
    if not isinstance(data, dict) or not data.get("contexts"):
        raise ProviderError("kubeconfig has no contexts: is it a kubeconfig file?")
    return data


def selected_user(config: dict[str, Any], context: str | None) -> tuple[str, dict[str, Any]]:
    """(context name, the `user` mapping it uses), with errors that list what exists."""
    name = context or config.get("current-context")
    contexts = {c.get("name"): c.get("context") or {} for c in config.get("contexts") or []}
    if not name or name not in contexts:
        raise ProviderError(f"kubeconfig has no context {name!r}; it has {sorted(contexts)}")
    user_name = contexts[name].get("user")
    users = {u.get("name"): u for u in config.get("users") or []}
    entry = users.get(user_name)
    if entry is None:
        raise ProviderError(f"kubeconfig context {name!r} names user {user_name!r}, which is missing")
    entry.setdefault("user", {})
    if entry["user"] is None:
        entry["user"] = {}
    return name, entry["user"]


def check_auth_plugins(
    config: dict[str, Any], context: str | None, azure: AzureClient | None = None
) -> float | None:
    """Reject (or, for kubelogin with Azure credentials, replace) exec plugins that cannot run.

    Mutates `config`; returns when a token put in its place expires.
    """
    ctx, user = selected_user(config, context)
    if "auth-provider" in user:
        provider = (user.get("auth-provider") or {}).get("name", "?")
        raise ProviderError(
            f"kubeconfig context {ctx!r} uses the removed auth-provider {provider!r}: regenerate it "
            "(`az aks get-credentials` then `kubelogin convert-kubeconfig`, or "
            "`gcloud container clusters get-credentials`)"
        )
    exec_cfg = user.get("exec")
    if not exec_cfg:
        return None
    command = str(exec_cfg.get("command") or "")
    base = os.path.basename(command)
    if base == "kubelogin" and azure is not None:
        # What `kubelogin convert-kubeconfig -l spn` does: a client-credentials token for the
        # AKS AAD server application stands in for the plugin.
        token = azure.token(AKS_SCOPE)
        user.pop("exec")
        user["token"] = token.token
        return token.expires_at
    if command and shutil.which(command):
        return None
    fix = PLUGIN_FIXES.get(base, f"install {base or 'it'} and put it on PATH")
    raise ProviderError(
        f"kubeconfig context {ctx!r} needs the exec credential plugin {command!r}, which is not "
        f"on PATH of this machine; nothing was created. Fix: {fix}"
    )


def build_access(
    *,
    kubeconfig: str | dict[str, Any] | None,
    context: str | None,
    in_cluster: bool,
    azure: AzureCredentials | None,
    azure_client: AzureClient | None = None,
) -> Access:
    """An ApiClient for the configured access; raises ProviderError naming the fix."""
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config

    if in_cluster:
        cfg = k8s_client.Configuration()
        try:
            k8s_config.load_incluster_config(client_configuration=cfg)
        except k8s_config.ConfigException as exc:
            raise ProviderError(
                f"in_cluster=True but this process does not run in a Kubernetes pod ({exc})"
            ) from None
        return Access(k8s_client.ApiClient(cfg))
    own = azure_client is None and azure is not None
    az = azure_client or (AzureClient(azure) if azure else None)
    try:
        if kubeconfig is not None:
            config = parse_kubeconfig(kubeconfig)
        elif az is not None:
            config = parse_kubeconfig(az.kubeconfig())
        else:
            config = parse_kubeconfig(read_default_kubeconfig())
        expires = check_auth_plugins(config, context, az)
    finally:
        if own and az is not None:
            az.close()
    try:
        api_client = k8s_config.new_client_from_config_dict(config, context=context)
    except k8s_config.ConfigException as exc:
        raise ProviderError(f"kubeconfig cannot be used: {exc}") from None
    return Access(api_client, expires)
