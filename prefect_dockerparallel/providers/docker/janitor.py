"""The janitor: removes what is left of a cluster on the engine once its flow runner has died.

Workers and the server stop by themselves when the driver's heartbeat is gone (the dead-man's
switch), but their stopped containers and the cluster's network would stay on the engine. The
driver starts this small process in its own session (a SIGKILL of the driver or of its process
group spares it) with the engine settings and the driver's pid. While the driver lives, the
janitor only watches the pid (and every 30 s whether the cluster still exists: it leaves when the
cluster was stopped). Once the driver is dead it waits until the cluster's server is no longer
running — it stops itself within idle_timeout, or keeps running when another process reconnected
and drives it — then removes every object of the cluster by label and exits.

    python -m prefect_dockerparallel.providers.docker.janitor '{"cluster": ..., "driver_pid": ..., "engine": {...}}'
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from . import inventory
from .engine import EngineConfig

log = logging.getLogger("prefect_dockerparallel.janitor")
PID_POLL = 1.0
EXISTS_POLL = 30.0
SERVER_POLL = 2.0
MODULE = "prefect_dockerparallel.providers.docker.janitor"
GIVE_UP_AFTER = 600.0  # seconds of engine errors after which `clusters cleanup` is left to do it


def process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (tells a reused pid apart), or None where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return None if fields[0] == "Z" else fields[19]
    except (OSError, IndexError):
        return None


def driver_alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return started is None or process_start(pid) == started


def cluster_exists(client: object, cluster: str) -> bool:
    return bool(inventory.containers(client, cluster) or inventory.networks(client, cluster))


def _detached_pidfile(cluster: str) -> Path:
    import tempfile

    return Path(tempfile.gettempdir()) / f"dp-janitor-{os.getuid()}-{cluster}.pid"


def superseded(cluster: str) -> bool:
    """A detached janitor hands over to the newest one of its cluster (one per warm cluster, not
    one per flow run that ever detached from it)."""
    try:
        return int(_detached_pidfile(cluster).read_text()) != os.getpid()
    except (OSError, ValueError):
        return False


def run(cluster: str, driver_pid: int, driver_started: str | None, engine: EngineConfig, detached: bool = False) -> str:
    client = None
    checked = time.monotonic()
    if detached:
        path = _detached_pidfile(cluster)
        fd = os.open(f"{path}.{os.getpid()}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        os.replace(f"{path}.{os.getpid()}", path)  # atomic: older janitors see a newer pid
    while not detached and driver_alive(driver_pid, driver_started):
        time.sleep(PID_POLL)
        if time.monotonic() - checked > EXISTS_POLL:
            checked = time.monotonic()
            try:
                client = client or engine.connect()
                if not cluster_exists(client, cluster):
                    return "cluster stopped"
            except Exception as exc:  # noqa: BLE001 - the engine may be back at the next look
                log.warning("cannot look at the engine: %s", exc)
                client = None
    failing_since: float | None = None
    while True:
        if detached and superseded(cluster):
            return "a newer janitor took over"
        try:
            client = client or engine.connect()
            if not cluster_exists(client, cluster):
                return "cluster stopped"
            if not inventory.server_running(client, cluster):
                removed = inventory.cleanup(client, cluster)
                return f"driver gone; removed {', '.join(removed) or 'nothing'}"
            failing_since = None
        except Exception as exc:  # noqa: BLE001 - an engine restart, a dropped ssh connection
            failing_since = failing_since or time.monotonic()
            if time.monotonic() - failing_since > GIVE_UP_AFTER:
                return f"gave up after {GIVE_UP_AFTER:.0f} s of engine errors: {exc}"
            log.warning("cannot look at the engine: %s", exc)
            client = None
        time.sleep(SERVER_POLL)


def spawn(cluster: str, engine: EngineConfig, detached: bool = False) -> subprocess.Popen[bytes]:
    """Start the janitor of `cluster` for this (driver) process, in a session of its own;
    `detached`: for a warm cluster no driver holds, it waits only for the server to stop."""
    config = {"cluster": cluster, "driver_pid": os.getpid(), "driver_started": process_start(os.getpid()),
              "engine": engine.as_dict(), "detached": detached}
    package_root = str(Path(__file__).resolve().parents[3])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(
        [sys.executable, "-m", MODULE, json.dumps(config)], env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,  # survives a SIGKILL of the driver's process group
    )


def terminate(proc: subprocess.Popen[bytes]) -> None:
    """Stop a janitor this process spawned (its cluster was stopped normally)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s janitor %(message)s")
    config = json.loads(argv[1])
    engine = EngineConfig(**config["engine"])
    detached = bool(config.get("detached"))
    try:
        outcome = run(config["cluster"], int(config["driver_pid"]), config.get("driver_started"), engine,
                      detached=detached)
    finally:
        if detached and not superseded(config["cluster"]):
            _detached_pidfile(config["cluster"]).unlink(missing_ok=True)
    log.info("cluster %s: %s", config["cluster"], outcome)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
