"""The AKSProvider block: per-flow-run clusters on Azure AKS or any Kubernetes cluster.

A block (editable in the Prefect UI) only validates and hands plain values to
`providers.kubernetes.KubernetesDriver`; the `kubernetes` package is imported when the driver
first talks to the API, never when Prefect imports this collection.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Literal

from prefect.blocks.core import Block
from pydantic import Field, field_validator

from ..providers.base import Provider
from ._form import Hidden, OptionalSecret, OptionalSecretText, OptionalText
from ._references import SelfReferencing

AZURE_FIELDS = (
    "azure_tenant_id",
    "azure_client_id",
    "azure_client_secret",
    "azure_subscription_id",
    "azure_resource_group",
    "aks_cluster_name",
)


class AKSProvider(SelfReferencing, Block):
    """Runs the Redis server and workers in a Kubernetes namespace (AKS, EKS, GKE, kind...).

    Cluster access, in order: `kubeconfig` (+ `context`); `in_cluster` (the flow runs in a pod);
    an Azure service principal (the six `azure_*`/`aks_*` fields) for which the kubeconfig is
    fetched over the ARM API; else this machine's default kubeconfig ($KUBECONFIG, ~/.kube/config).
    """

    _block_type_name = "DockerParallel AKS Provider"
    _block_type_slug = "dockerparallel-aks-provider"
    _description = (
        "Per-flow-run clusters on Azure AKS or any Kubernetes cluster: a Redis server pod and a "
        "work-queue Job of worker pods in one namespace, removed when the flow run ends."
    )
    _documentation_url = "https://github.com/prefect-dockerparallel/prefect-dockerparallel/blob/main/docs/kubernetes.md"
    _code_example = """
    ```python
    from prefect_dockerparallel import AKSProvider, DockerParallelTaskRunner

    aks = AKSProvider.load("BLOCK_NAME")
    runner = DockerParallelTaskRunner(provider=aks, workers=8)
    # or reference it from a saved cluster config: ClusterConfig(provider=aks).save("aks-8")
    ```
    """

    kind: Hidden[Literal["aks"]] = Field(default="aks", description="Provider discriminator (not a form field).")
    namespace: str = Field(
        default="default",
        title="Kubernetes Namespace",
        description="Namespace the cluster's objects are created in; the account needs the Role in docs/kubernetes.md there.",
    )
    kubeconfig: OptionalSecretText = Field(
        default=None,
        title="kubeconfig",
        description=(
            "kubeconfig document (YAML, pasted whole; stored as a secret and masked when shown again). "
            "An exec plugin it names (kubelogin, gke-gcloud-auth-plugin) must be installed where the "
            "flow runs. Empty: in-cluster, Azure service principal, or this machine's default kubeconfig."
        ),
    )
    context: OptionalText = Field(
        default=None, title="kubeconfig Context", description="Context of the kubeconfig; empty: its current-context."
    )
    in_cluster: bool = Field(
        default=False,
        title="In Cluster",
        description="Use the pod's service account: the flow itself runs in this Kubernetes cluster.",
    )
    azure_tenant_id: OptionalText = Field(
        default=None, title="Azure Tenant ID", description="Azure AD (Entra ID) tenant of the service principal."
    )
    azure_client_id: OptionalText = Field(
        default=None, title="Azure Client ID", description="Application (client) ID of the service principal."
    )
    azure_client_secret: OptionalSecret = Field(
        default=None, title="Azure Client Secret", description="Client secret of the service principal."
    )
    azure_subscription_id: OptionalText = Field(
        default=None, title="Azure Subscription ID", description="Subscription of the AKS cluster."
    )
    azure_resource_group: OptionalText = Field(
        default=None, title="Azure Resource Group", description="Resource group of the AKS cluster."
    )
    aks_cluster_name: OptionalText = Field(
        default=None, title="AKS Cluster Name", description="Name of the AKS managed cluster."
    )
    arm_api_version: str = Field(
        default="2024-05-01",
        title="ARM API Version",
        description="api-version of the ARM listClusterUserCredential call (Microsoft.ContainerService).",
    )
    azure_authority_host: str = Field(
        default="https://login.microsoftonline.com",
        title="Azure Authority Host",
        description="Azure AD authority; change for sovereign clouds (e.g. https://login.microsoftonline.us).",
    )
    arm_endpoint: str = Field(
        default="https://management.azure.com",
        title="ARM Endpoint",
        description="Azure Resource Manager endpoint; change for sovereign clouds.",
    )
    access: Literal["auto", "port-forward", "loadbalancer", "direct"] = Field(
        default="auto",
        title="Redis Access",
        description=(
            "How the flow runner reaches Redis. 'port-forward': tunnelled through the API server (TLS, "
            "no public endpoint); 'loadbalancer': the Redis Service becomes a LoadBalancer open only to "
            "source_ranges (faster, but a public IP and unencrypted Redis traffic); 'direct': by the "
            "Service's cluster DNS name (the flow runs in the cluster or has a route to it); 'auto': "
            "direct when in_cluster, else port-forward."
        ),
    )
    source_ranges: list[str] = Field(
        default_factory=list,
        title="Source Ranges (CIDR)",
        description=(
            'access "loadbalancer" only: CIDRs allowed through it, one per item (JSON list), e.g. ["203.0.113.7/32"]; '
            "empty: this machine's egress IP (/32), found via the Egress IP URL."
        ),
        examples=[["203.0.113.7/32"]],
    )
    egress_ip_url: str = Field(
        default="https://api.ipify.org",
        title="Egress IP URL",
        description="URL that answers this machine's public IP as plain text (used when source_ranges is empty).",
    )
    redis_port: int = Field(
        default=6379, ge=1, le=65535, title="Redis Port", description="Port of the Redis container and Service."
    )
    service_annotations: dict[str, str] = Field(
        default_factory=dict,
        title="Service Annotations",
        description=(
            "Annotations of the LoadBalancer Service, as a JSON object of strings, e.g. "
            '{"service.beta.kubernetes.io/azure-load-balancer-internal": "true"}.'
        ),
        examples=[{"service.beta.kubernetes.io/azure-load-balancer-internal": "true"}],
    )
    service_account_name: OptionalText = Field(
        default=None,
        title="Service Account Name",
        description="Service account of the server and worker pods (e.g. for workload identity); empty: the namespace default.",
    )
    image_pull_secrets: list[str] = Field(
        default_factory=list,
        title="Image Pull Secrets",
        description='Names of Secrets in the namespace used to pull a private image, one per item (JSON list), e.g. ["regcred"].',
        examples=[["regcred"]],
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        title="Node Selector",
        description='nodeSelector of the server and worker pods, as a JSON object, e.g. {"agentpool": "batch"}.',
        examples=[{"agentpool": "batch"}],
    )
    tls: bool = Field(
        default=True,
        title="TLS",
        description=(
            "Encrypt Redis traffic with a per-cluster CA (also inside a port-forward); the server's key "
            "lives in the cluster's Secret. Off: the password, payloads and PREFECT_API_KEY travel in "
            "clear and every cluster start logs a warning."
        ),
    )
    tls_lifetime_hours: float = Field(
        default=24, gt=0, title="TLS Certificate Lifetime (hours)",
        description="How long a cluster's certificate is valid; a cluster older than this refuses new connections.",
    )
    start_timeout: float = Field(
        default=600, gt=0, description="Seconds to wait for the Redis pod and load balancer (image pulls included)."
    )

    @field_validator("source_ranges")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for rng in value:
            try:
                ipaddress.ip_network(rng, strict=False)
            except ValueError:
                raise ValueError(f"source_ranges: {rng!r} is not a CIDR such as 203.0.113.7/32") from None
        return value

    def _check_access(self) -> None:
        """At build time, not at construction: a half-edited block must still save and load."""
        given = [n for n in AZURE_FIELDS if getattr(self, n)]
        if given and len(given) != len(AZURE_FIELDS):
            missing = [n for n in AZURE_FIELDS if n not in given]
            raise ValueError(f"Azure service principal access needs all of {list(AZURE_FIELDS)}; missing: {missing}")
        ways = [w for w, on in (("kubeconfig", self.kubeconfig is not None), ("in_cluster", self.in_cluster),
                                ("Azure service principal", bool(given))) if on]
        if len(ways) > 1:
            raise ValueError(f"choose one way to reach the cluster, not {' and '.join(ways)}")

    def build_provider(self) -> Provider:
        from ..providers.kubernetes.azure import AzureCredentials
        from ..providers.kubernetes.driver import KubernetesDriver

        self._check_access()
        azure = None
        if self.azure_client_secret is not None:
            azure = AzureCredentials(
                tenant_id=str(self.azure_tenant_id),
                client_id=str(self.azure_client_id),
                client_secret=self.azure_client_secret.get_secret_value(),
                subscription_id=str(self.azure_subscription_id),
                resource_group=str(self.azure_resource_group),
                cluster_name=str(self.aks_cluster_name),
                api_version=self.arm_api_version,
                authority_host=self.azure_authority_host,
                arm_endpoint=self.arm_endpoint,
            )
        options: dict[str, Any] = dict(
            namespace=self.namespace,
            kubeconfig=self.kubeconfig.get_secret_value() if self.kubeconfig else None,
            context=self.context,
            in_cluster=self.in_cluster,
            azure=azure,
            access=self.access,
            source_ranges=list(self.source_ranges) or None,
            egress_ip_url=self.egress_ip_url,
            redis_port=self.redis_port,
            service_annotations=dict(self.service_annotations),
            service_account_name=self.service_account_name,
            image_pull_secrets=list(self.image_pull_secrets),
            node_selector=dict(self.node_selector),
            start_timeout=self.start_timeout,
            tls=self.tls,
            tls_lifetime=self.tls_lifetime_hours * 3600,
        )
        return KubernetesDriver(**options)
