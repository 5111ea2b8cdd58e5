"""Real containers for the fake clouds: the Fargate agent (`ecs_agent.py`) and the kubelet
(`k8s_fake_kubelet.py`) run what a task definition or pod spec names through this module.

`DockerRuntime.start(ContainerRequest)` runs any image with its entrypoint and command as
written, the environment, CPU and memory limits (no swap, as on Fargate and Kubernetes), an
init process if asked, a network address or DNS aliases and loopback-published ports; the
`Workload` it returns reports the exit code and whether the kernel's OOM killer ended it, stops
as `docker stop` does (SIGTERM, SIGKILL after the timeout) and keeps its output once removed.
Everything carries the runtime's labels (the test's `docker_tracker` labels), so the tracker
removes exactly this test's containers and networks even when a fake crashed.

The fakes need an engine on this machine: published ports are this machine's loopback ports,
and containers reach the Prefect API through `prefect_relay.py`.
"""

from __future__ import annotations

import ipaddress
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest


class ContainerStartError(RuntimeError):
    """The engine refused the container (unknown image, bad limits): the cloud's start failure."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason, self.message = reason, message


@dataclass
class ContainerRequest:
    """What a task definition / pod spec asks for, in Docker's terms."""

    image: str
    name: str
    entrypoint: list[str] | None = None
    command: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    hostname: str | None = None
    cpus: float | None = None  # 1.0 = one CPU
    memory_mb: int | None = None
    init: bool = False
    stop_timeout: int | None = None
    network: str | None = None
    ipv4_address: str | None = None
    aliases: list[str] = field(default_factory=list)
    publish: dict[int, int] = field(default_factory=dict)  # container port -> 127.0.0.1 port
    labels: dict[str, str] = field(default_factory=dict)


class Workload:
    """One running container; a waiter thread records how it ended (event-driven, no polling)."""

    def __init__(self, runtime: DockerRuntime, container: Any, request: ContainerRequest) -> None:
        self.runtime, self.container, self.request = runtime, container, request
        self.id, self.name = container.id, container.name
        self.started_at = time.monotonic()
        self.stop_requested_at: float | None = None
        self.ended_at: float | None = None
        self.exit_code: int | None = None
        self.oom_killed = False
        self.ip = ""
        self.attrs: dict[str, Any] = {}  # `docker inspect` right after the start
        self._output: str | None = None
        self._stopping = False
        self._waiter = threading.Thread(target=self._wait, name=f"wait-{self.name}", daemon=True)

    def _wait(self) -> None:
        try:
            code = int(self.runtime.waiter.wait(self.id, timeout=None)["StatusCode"])
            state = self.runtime.waiter.inspect_container(self.id)["State"]
            self.oom_killed = bool(state.get("OOMKilled"))
        except Exception:  # noqa: BLE001 - removed under us (test cleanup): count it as killed
            code = 137
        self._output = self._read_logs()
        self.ended_at = time.monotonic()
        self.exit_code = code

    def _read_logs(self) -> str:
        """Output with Docker's timestamp in front of every line."""
        try:
            raw = self.runtime.waiter.logs(self.id, stdout=True, stderr=True, timestamps=True)
            return raw.decode(errors="replace")
        except Exception:  # noqa: BLE001
            return self._output or ""

    @property
    def running(self) -> bool:
        return self.exit_code is None

    def logs(self) -> str:
        """Output so far (stdout and stderr), also after the container was removed."""
        stamped = self._output if self._output is not None else self._read_logs()
        return "".join(line.partition(" ")[2] for line in stamped.splitlines(keepends=True))

    def stop(self, timeout: float) -> None:
        """`docker stop -t timeout` in the background: SIGTERM now, SIGKILL after `timeout`."""
        if self._stopping or not self.running:
            return
        self._stopping = True
        self.stop_requested_at = time.monotonic()

        def stop() -> None:
            try:
                self.runtime.waiter.stop(self.id, timeout=int(timeout))
            except Exception:  # noqa: BLE001 - gone already
                pass

        threading.Thread(target=stop, name=f"stop-{self.name}", daemon=True).start()

    def kill(self, signal: str = "SIGKILL") -> None:
        if self.running:
            try:
                self.container.kill(signal=signal)
            except Exception:  # noqa: BLE001 - exited meanwhile
                pass

    def remove(self) -> None:
        """Remove the container once it has ended (its output stays readable here)."""
        if self.running:
            self.kill()
            self._waiter.join(timeout=30)
        try:
            self.container.remove(force=True)
        except Exception:  # noqa: BLE001 - already removed
            pass
        self.runtime.forget(self)

    def seconds_until(self, pattern: str) -> float | None:
        """Container start -> the first output line containing `pattern` (Docker's clock)."""
        started = _rfc3339(self.attrs.get("State", {}).get("StartedAt", ""))
        text = self._output if self._output is not None else self._read_logs()
        for line in text.splitlines():
            stamp, _, rest = line.partition(" ")
            if pattern in rest and started is not None:
                at = _rfc3339(stamp)
                return None if at is None else at - started
        return None

    @property
    def stop_seconds(self) -> float | None:
        """Stop requested -> container gone (the `docker stop` duration)."""
        if self.stop_requested_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.stop_requested_at


class DockerRuntime:
    """Starts containers and networks with the given labels; `close()` removes all it made."""

    def __init__(self, client: Any, labels: dict[str, str], prefix: str = "dp-fake") -> None:
        import docker

        self.client = client
        # A second connection pool for blocking calls (wait, stop), without a read timeout.
        self.waiter = docker.APIClient(version=client.api.api_version, timeout=None, max_pool_size=64,
                                       **docker.utils.kwargs_from_env())
        self.labels = dict(labels)
        self.prefix = prefix
        self.host_cpus = float(client.info().get("NCPU") or os.cpu_count() or 1)
        self.workloads: dict[str, Workload] = {}
        self.finished: list[Workload] = []  # removed workloads, for their output
        self.networks: list[Any] = []
        self._lock = threading.Lock()
        self._names = 0

    # -- networks ----------------------------------------------------------------------------
    def name(self, what: str) -> str:
        with self._lock:
            self._names += 1
            return f"{self.prefix}-{what}-{os.getpid()}-{self._names}-{os.urandom(3).hex()}"

    def network(self, subnet: str | None = None, gateway: str | None = None) -> Any:
        import docker

        ipam = None
        if subnet:
            pool = docker.types.IPAMPool(subnet=subnet, gateway=gateway)
            ipam = docker.types.IPAMConfig(pool_configs=[pool])
        net = self.client.networks.create(self.name("net"), driver="bridge", ipam=ipam,
                                          labels=self.labels, check_duplicate=True)
        self.networks.append(net)
        return net

    def network_around(self, ip: str) -> Any:
        """A network whose subnet holds `ip` (the narrowest free one of /24../29 around it), so a
        container can have exactly the address the cloud reported."""
        import docker

        address = ipaddress.ip_address(ip)
        for net in self.networks:
            if any(address in ipaddress.ip_network(s) for s in _subnets(net.attrs)):
                return net
        taken = [ipaddress.ip_network(s) for n in self.client.networks.list() for s in _subnets(n.attrs)]
        for prefix in range(24, 30):
            subnet = ipaddress.ip_network(f"{ip}/{prefix}", strict=False)
            if any(subnet.overlaps(t) for t in taken):
                continue
            hosts = [h for h in (subnet.network_address + 1, subnet.broadcast_address - 1) if h != address]
            try:
                return self.network(str(subnet), str(hosts[-1]))
            except docker.errors.APIError as exc:  # another engine user took it meanwhile
                if "overlap" not in str(exc).lower():
                    raise
        raise ContainerStartError("NetworkUnavailable", f"no free Docker subnet around {ip}")

    # -- containers --------------------------------------------------------------------------
    def start(self, req: ContainerRequest) -> Workload:
        import docker

        api = self.client.api
        host: dict[str, Any] = dict(init=req.init or None)
        if req.cpus:
            host["nano_cpus"] = int(min(req.cpus, self.host_cpus) * 1e9)
        if req.memory_mb:
            host["mem_limit"] = host["memswap_limit"] = f"{req.memory_mb}m"
        if req.publish:
            host["port_bindings"] = {c: ("127.0.0.1", h) for c, h in req.publish.items()}
        networking = None
        if req.network:
            host["network_mode"] = req.network
            endpoint = api.create_endpoint_config(ipv4_address=req.ipv4_address, aliases=req.aliases or None)
            networking = api.create_networking_config({req.network: endpoint})
        try:
            created = api.create_container(
                req.image, req.command, name=req.name, entrypoint=req.entrypoint, environment=dict(req.env),
                hostname=req.hostname, labels={**req.labels, **self.labels}, detach=True,
                ports=list(req.publish) or None, stop_timeout=req.stop_timeout,
                host_config=api.create_host_config(**host), networking_config=networking,
            )
        except docker.errors.ImageNotFound as exc:
            raise ContainerStartError("CannotPullContainerError", f"image {req.image!r} not found: {exc.explanation}") from None
        except docker.errors.APIError as exc:
            raise ContainerStartError("CannotCreateContainerError", str(exc.explanation or exc)) from None
        container = self.client.containers.get(created["Id"])
        workload = Workload(self, container, req)
        with self._lock:
            self.workloads[workload.id] = workload
        try:
            container.start()
            container.reload()
        except docker.errors.APIError as exc:
            workload.remove()
            raise ContainerStartError("CannotStartContainerError", str(exc.explanation or exc)) from None
        workload.started_at = time.monotonic()
        workload.attrs = container.attrs
        nets = container.attrs["NetworkSettings"]["Networks"]
        workload.ip = (nets.get(req.network) or {}).get("IPAddress", "") if req.network else ""
        workload._waiter.start()
        return workload

    def connect(self, workload: Workload, network: Any) -> None:
        try:
            network.connect(workload.id)
        except Exception:  # noqa: BLE001 - already connected, or ended
            pass

    def forget(self, workload: Workload) -> None:
        with self._lock:
            if self.workloads.pop(workload.id, None) is not None:
                self.finished.append(workload)

    def all_logs(self) -> str:
        """Output of every container this runtime ran, running or removed."""
        with self._lock:
            everything = list(self.finished) + list(self.workloads.values())
        return "\n".join(w.logs() for w in everything)

    def timings(self, joined: str = "joined cluster") -> dict[str, list[float]]:
        """Per container: start -> `joined` line, and stop requested -> gone (for reports)."""
        with self._lock:
            everything = list(self.finished) + list(self.workloads.values())
        join = [t for t in (w.seconds_until(joined) for w in everything) if t is not None]
        stop = [t for t in (w.stop_seconds for w in everything) if t is not None]
        return {"join_s": sorted(round(t, 2) for t in join), "stop_s": sorted(round(t, 2) for t in stop)}

    def report(self, what: str) -> None:
        """Print the timings (visible with `pytest -s`); append them to $DP_CONTAINER_TIMINGS."""
        import json

        line = json.dumps({"test": what, **self.timings()})
        print(f"container timings: {line}")
        if os.environ.get("DP_CONTAINER_TIMINGS"):
            with open(os.environ["DP_CONTAINER_TIMINGS"], "a") as out:
                out.write(line + "\n")
            with open(os.environ["DP_CONTAINER_TIMINGS"] + ".logs", "a") as out:
                with self._lock:
                    everything = list(self.finished) + list(self.workloads.values())
                for w in everything:
                    out.write(f"==> {what}: {w.name} ({w.request.image}) exit {w.exit_code} "
                              f"oom {w.oom_killed} <==\n{w.logs()}\n")

    def close(self) -> None:
        for workload in list(self.workloads.values()):
            workload.remove()
        for net in self.networks:
            try:
                net.remove()
            except Exception:  # noqa: BLE001 - the tracker retries with force
                pass
        self.networks.clear()
        self.waiter.close()


def _rfc3339(stamp: str) -> float | None:
    """Docker's RFC 3339 timestamps (nanoseconds, Z) as epoch seconds."""
    from datetime import datetime

    if not stamp or stamp.startswith("0001"):
        return None
    head, _, frac = stamp.rstrip("Z").partition(".")
    try:
        base = datetime.fromisoformat(head + "+00:00").timestamp()
    except ValueError:
        return None
    return base + (float(f"0.{frac}") if frac else 0.0)


def _subnets(attrs: dict[str, Any]) -> list[str]:
    return [c["Subnet"] for c in ((attrs.get("IPAM") or {}).get("Config") or []) if c.get("Subnet")]


@pytest.fixture
def container_runtime(docker_tracker: Any) -> Iterator[DockerRuntime]:
    """A DockerRuntime labelled with this test's owner label (the tracker removes leftovers)."""
    runtime = DockerRuntime(docker_tracker.client, docker_tracker.labels)
    try:
        yield runtime
    finally:
        runtime.close()
