"""Worker container entrypoint: `python -m prefect_dockerparallel.container.worker`.

It reads its connection and secrets from the environment (`providers.base.worker_env`; a secrets
file first, where the provider delivers them that way). With
DOCKERPARALLEL_SLOTS=n>1 it supervises n slot processes (one task each at a time, like the seed's
R workers); each slot (`slot.py`) checks versions against the driver's record, keeps its lease
alive from a heartbeat thread, runs Prefect tasks through the task engine with one long-lived
settings context and API client (`engine.py`), and exits by itself when the driver's heartbeat has
been gone for `idle_timeout` (dead-man's switch) or the cluster is stopping.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

from ..protocol import TaskQueue, connect_from_env
from ..protocol import keys as K
from ..specs import WORKER_MODULE
from . import secrets_file
from .slot import EXIT_VERSION_MISMATCH, run_slot

log = logging.getLogger("prefect_dockerparallel.worker")


def driver_alive(queue: TaskQueue) -> bool:
    try:
        return bool(queue.redis.exists(queue.keys.driver))
    except Exception:  # noqa: BLE001 - Redis gone means the cluster is gone
        return False


def supervise(slots: int) -> int:
    """Run `slots` slot processes; replace one that crashed while the cluster is alive."""
    child_env = {**os.environ, K.ENV_SLOTS: "1"}
    child_env.pop(K.ENV_WORKER_ID, None)
    cmd = [sys.executable, "-m", WORKER_MODULE]
    children = [subprocess.Popen(cmd, env=child_env) for _ in range(slots)]

    def forward(signum: int, _: Any) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    queue = TaskQueue(connect_from_env(child_env), child_env[K.ENV_CLUSTER])
    while True:
        for i, child in enumerate(children):
            code = child.poll()
            if code is None or code == 0:
                continue
            if code == EXIT_VERSION_MISMATCH or not driver_alive(queue):
                forward(signal.SIGTERM, None)
                return code
            log.warning("slot process exited with %s; starting a replacement", code)
            children[i] = subprocess.Popen(cmd, env=child_env)
        if all(c.poll() == 0 for c in children):
            return 0
        time.sleep(0.5)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(message)s")
    secrets_file.load()  # the Docker provider delivers the secrets as a file, never in `docker inspect`
    slots = int(os.environ.get(K.ENV_SLOTS, "1"))
    if slots > 1:
        return supervise(slots)
    return run_slot()


if __name__ == "__main__":
    sys.exit(main())
