"""What keeps the link to a cluster's Redis private on Kubernetes: the cluster certificate, the
CA and certificate kept in the cluster's Secret, and a LoadBalancer's source ranges.

Split from driver.py because these decide who can read or reach the server, not how pods and
Jobs are converged. The server's key is never read back here: pods reference it in the Secret.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
from typing import Any

from .. import tls as tls_mod
from ..base import ProviderError
from ...protocol import keys as K
from ...specs import ClusterSecrets, ClusterSpec
from . import objects as O

log = logging.getLogger("prefect_dockerparallel.kubernetes")


def certificate(spec: ClusterSpec, namespace: str, enabled: bool, lifetime: float) -> tls_mod.ClusterTLS | None:
    """The cluster's CA and server certificate for the Service's names (127.0.0.1 included, for
    port-forwards); None, and a warning at every start, when TLS was turned off."""
    if not enabled:
        log.warning(
            "cluster %s: TLS is OFF (tls=False on the Kubernetes provider): the Redis password, task "
            "payloads, results and the flow run's settings (PREFECT_API_KEY included) travel "
            "unencrypted inside the cluster network (and beyond it with access='loadbalancer')", spec.name,
        )
        return None
    return tls_mod.generate(spec.name, O.tls_names(spec, namespace), lifetime)


def stored_tls(api: Any, namespace: str, spec: ClusterSpec) -> tls_mod.ClusterTLS | None:
    """CA and certificate kept in the cluster's Secret (public parts only; key_pem is empty)."""
    data = (api.get("secrets", namespace, O.secret_name(spec)) or {}).get("data") or {}
    try:
        ca, cert = (base64.b64decode(data[k]).decode() for k in (O.CA_KEY, O.CERT_KEY))
    except (KeyError, ValueError):
        return None
    return tls_mod.ClusterTLS(ca_pem=ca, cert_pem=cert, key_pem="", not_after=tls_mod.not_after(ca))


def source_ranges(explicit: list[str] | None, egress_ip_url: str) -> list[str]:
    """Explicit ranges, else this machine's egress IP as seen from the internet."""
    if explicit:
        return explicit
    import httpx

    try:
        text = httpx.get(egress_ip_url, timeout=10).text.strip()
        ip = ipaddress.ip_address(text)
    except (httpx.HTTPError, ValueError):
        raise ProviderError(
            f"could not learn this machine's egress IP from {egress_ip_url}; set "
            "source_ranges (CIDRs allowed to reach Redis) or use access='direct'"
        ) from None
    return [f"{ip}/{32 if ip.version == 4 else 128}"]


def stored_secrets(api: Any, namespace: str, spec: ClusterSpec) -> ClusterSecrets | None:
    """Password and signing key from the cluster's Secret (how another process reconnects)."""
    obj = api.get("secrets", namespace, O.secret_name(spec))
    if obj is None:
        return None
    data = obj.get("data") or {}
    try:
        password = base64.b64decode(data[O.SECRET_KEYS[K.ENV_REDIS_PASSWORD]]).decode()
        key = bytes.fromhex(base64.b64decode(data[O.SECRET_KEYS[K.ENV_SIGNING_KEY]]).decode())
    except (KeyError, ValueError):
        return None
    return ClusterSecrets(redis_password=password, signing_key=key)
