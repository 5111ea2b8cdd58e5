"""The AKSProvider block: per-flow-run clusters on Azure AKS or any Kubernetes cluster.

A block (editable in the Prefect UI) only validates and hands plain values to
`providers.kubernetes.KubernetesDriver`; the `kubernetes` package is imported when the driver
first talks to the API, never when Prefect imports this collection.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Literal, Optional

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, field_validator

from ..providers.base import Provider

AZURE_FIELDS = (
    "azure_tenant_id",
    "azure_client_id",
    "azure_client_secret",
    "azure_subscription_id",
    "azure_resource_group",
    "aks_cluster_name",
)


class AKSProvider(Block):
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
    ```
    """

    kind: Literal["aks"] = Field(default="aks", description="Provider discriminator; always 'aks' for this block.")
    namespace: str = Field(
        default="default",
        description="Namespace the cluster's objects are created in; the account needs the Role in docs/kubernetes.md there.",
    )
    kubeconfig: Optional[SecretStr] = Field(
        default=None,
        description="kubeconfig document (YAML). Users needing an exec plugin (kubelogin, gke-gcloud-auth-plugin) need it installed where the flow runs.",
    )
    context: Optional[str] = Field(default=None, description="kubeconfig context; default: its current-context.")
    in_cluster: bool = Field(
        default=False,
        description="Use the pod's service account: the flow itself runs in this Kubernetes cluster.",
    )
    azure_tenant_id: Optional[str] = Field(default=None, description="Azure AD tenant of the service principal.")
    azure_client_id: Optional[str] = Field(default=None, description="Application (client) id of the service principal.")
    azure_client_secret: Optional[SecretStr] = Field(default=None, description="Client secret of the service principal.")
    azure_subscription_id: Optional[str] = Field(default=None, description="Subscription of the AKS cluster.")
    azure_resource_group: Optional[str] = Field(default=None, description="Resource group of the AKS cluster.")
    aks_cluster_name: Optional[str] = Field(default=None, description="Name of the AKS managed cluster.")
    arm_api_version: str = Field(
        default="2024-05-01",
        description="api-version of the ARM listClusterUserCredential call (Microsoft.ContainerService).",
    )
    azure_authority_host: str = Field(
        default="https://login.microsoftonline.com",
        description="Azure AD authority; change for sovereign clouds (e.g. https://login.microsoftonline.us).",
    )
    arm_endpoint: str = Field(
        default="https://management.azure.com",
        description="Azure Resource Manager endpoint; change for sovereign clouds.",
    )
    access: Literal["auto", "port-forward", "loadbalancer", "direct"] = Field(
        default="auto",
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
        description="access='loadbalancer' only: CIDRs allowed through it; empty: this machine's egress IP (/32), found via egress_ip_url.",
    )
    egress_ip_url: str = Field(
        default="https://api.ipify.org",
        description="URL that answers this machine's public IP as plain text (used when source_ranges is empty).",
    )
    redis_port: int = Field(default=6379, ge=1, le=65535, description="Port of the Redis container and Service.")
    service_annotations: dict[str, str] = Field(
        default_factory=dict,
        description="Annotations of the LoadBalancer Service, e.g. service.beta.kubernetes.io/azure-load-balancer-internal: 'true'.",
    )
    service_account_name: Optional[str] = Field(
        default=None, description="Service account of the server and worker pods (e.g. for workload identity)."
    )
    image_pull_secrets: list[str] = Field(
        default_factory=list, description="Names of Secrets in the namespace used to pull a private image."
    )
    node_selector: dict[str, str] = Field(default_factory=dict, description="nodeSelector of the server and worker pods.")
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
        )
        return KubernetesDriver(**options)
