"""Finding, describing and removing a cluster's objects on an engine, by label only.

Used by the driver (teardown, `clusters ls|cleanup`, `logs`, lost-worker reasons) and by the
janitor process. Never selects anything by name: only objects with this provider's labels.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ...specs import ClusterRecord
from . import objects as O

log = logging.getLogger(__name__)
DEAD_STATES = ("exited", "dead")


def containers(client: Any, cluster: str | None = None, role: str | None = None) -> list[dict[str, Any]]:
    """Summaries (one list call, no inspect per container) of this provider's containers."""
    return client.api.containers(all=True, filters=O.selector(cluster, role))


def name_of(summary: dict[str, Any]) -> str:
    return (summary.get("Names") or ["/" + summary["Id"][:12]])[0].lstrip("/")


def networks(client: Any, cluster: str | None = None) -> list[dict[str, Any]]:
    return client.api.networks(filters=O.selector(cluster))


def volumes(client: Any, cluster: str | None = None) -> list[dict[str, Any]]:
    return client.api.volumes(filters=O.selector(cluster)).get("Volumes") or []


def server_running(client: Any, cluster: str) -> bool:
    return any(c["State"] == "running" for c in containers(client, cluster, "server"))


def exit_reason(state: dict[str, Any], name: str, memory_mb: int | None = None) -> str:
    """A user's account of how a container ended, from `docker inspect`'s State."""
    code = state.get("ExitCode")
    if state.get("OOMKilled"):
        limit = f" of {memory_mb} MiB" if memory_mb else ""
        return (f"container {name} was killed for running out of memory (its memory limit{limit} was "
                "reached; raise worker_memory)")
    if code == 137:
        return f"container {name} was killed (SIGKILL, exit code 137)"
    if code == 143:
        return f"container {name} was stopped (SIGTERM, exit code 143)"
    detail = f": {state['Error']}" if state.get("Error") else ""
    return f"container {name} exited with code {code}{detail}"


def remove_containers(client: Any, summaries: list[dict[str, Any]]) -> list[str]:
    """Force-remove (SIGKILL) containers in parallel; returns the names removed."""
    from docker import errors as docker_errors

    def remove(summary: dict[str, Any]) -> str | None:
        try:
            client.api.remove_container(summary["Id"], force=True, v=True)
            return name_of(summary)
        except docker_errors.NotFound:
            return None
        except docker_errors.APIError as exc:
            if "already in progress" in str(exc):
                return name_of(summary)
            raise

    if not summaries:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(summaries))) as pool:
        return [n for n in pool.map(remove, summaries) if n]


def cleanup(client: Any, cluster: str) -> list[str]:
    """Remove every object of the cluster: containers, then its network(s), then volumes."""
    from docker import errors as docker_errors
    removed = [f"container/{n}" for n in remove_containers(client, containers(client, cluster))]
    for net in networks(client, cluster):
        try:
            for attached in (client.api.inspect_network(net["Id"]).get("Containers") or {}):
                client.api.disconnect_container_from_network(attached, net["Id"], force=True)
            client.api.remove_network(net["Id"])
            removed.append(f"network/{net['Name']}")
        except docker_errors.NotFound:
            pass
    for vol in volumes(client, cluster):
        try:
            client.api.remove_volume(vol["Name"], force=True)
            removed.append(f"volume/{vol['Name']}")
        except docker_errors.NotFound:
            pass
    return removed


def list_clusters(client: Any) -> list[ClusterRecord]:
    """Clusters found by label; alive while their server container runs."""
    found: dict[str, dict[str, Any]] = {}

    def entry(labels: dict[str, str]) -> dict[str, Any]:
        name = labels.get(O.CLUSTER_LABEL, "?")
        return found.setdefault(name, {"flow_run": labels.get(O.FLOW_RUN_LABEL), "resources": [], "alive": False})

    for c in containers(client):
        item = entry(c.get("Labels") or {})
        item["resources"].append(f"container/{name_of(c)}")
        if (c.get("Labels") or {}).get(O.ROLE_LABEL) == "server" and c["State"] == "running":
            item["alive"] = True
    for net in networks(client):
        entry(net.get("Labels") or {})["resources"].append(f"network/{net['Name']}")
    for vol in volumes(client):
        entry(vol.get("Labels") or {})["resources"].append(f"volume/{vol['Name']}")
    return [
        ClusterRecord(name=name, provider=O.PROVIDER, flow_run_id=item["flow_run"],
                      resources=tuple(item["resources"]), alive=item["alive"])
        for name, item in sorted(found.items())
    ]


def logs(client: Any, cluster: str, tail: int) -> str:
    """The server's log first, then each worker container's."""
    parts = []
    found = containers(client, cluster)
    found.sort(key=lambda c: ((c.get("Labels") or {}).get(O.ROLE_LABEL) != "server", name_of(c)))
    for c in found:
        text = client.api.logs(c["Id"], tail=tail).decode(errors="replace")
        parts.append(f"==> {name_of(c)} ({c['State']}) <==\n{text.rstrip()}")
    return "\n".join(parts)
