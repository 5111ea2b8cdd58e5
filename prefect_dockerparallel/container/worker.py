"""Worker container entrypoint: `python -m prefect_dockerparallel.container.worker`.

It reads its connection and secrets from the environment (`providers.base.worker_env`; a secrets
file first, where the provider delivers them that way). With DOCKERPARALLEL_SLOTS=n>1 it
supervises n slot processes (one task each at a time, like the seed's R workers); each slot
(`slot.py`) checks versions against the driver's record, keeps its lease alive from a heartbeat
thread, runs Prefect tasks through the task engine with one long-lived settings context and API
client (`engine.py`), and exits by itself when the driver's heartbeat has been gone for
`idle_timeout` (dead-man's switch) or the cluster is stopping.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from itertools import count
from typing import Any

from ..protocol import TaskQueue, connect_from_env
from ..protocol import keys as K
from ..specs import WORKER_MODULE
from . import secrets_file
from .slot import EXIT_VERSION_MISMATCH, run_slot

log = logging.getLogger("prefect_dockerparallel.worker")

# After SIGTERM a slot hands its claimed task back and exits within milliseconds; one that has not
# exited by then (stuck in C code that holds the GIL) is killed and the supervisor hands its claims
# back, so the container is gone well before `docker stop`'s 10 s (ECS: stopTimeout 30 s) SIGKILL.
SIGTERM_GRACE = 2.0
EXIT_SIGTERM = 143


def driver_alive(queue: TaskQueue) -> bool:
    try:
        return bool(queue.redis.exists(queue.keys.driver))
    except Exception:  # noqa: BLE001 - Redis gone means the cluster is gone
        return False


class Supervisor:
    """Runs `slots` slot processes; replaces one that crashed while the cluster is alive, and
    after SIGTERM (docker stop, ECS StopTask, scale-in) replaces none.

    The supervisor names its slots (DOCKERPARALLEL_WORKER_ID), so it can give back the claims of
    a slot it had to kill."""

    def __init__(self, slots: int, env: dict[str, str] | None = None):
        self.slots = slots
        self.env = {**(os.environ if env is None else env), K.ENV_SLOTS: "1"}
        self.cmd = [sys.executable, "-m", WORKER_MODULE]
        self.host = socket.gethostname()[:40]
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.terminating = False
        self._numbers = count()

    def spawn(self) -> None:
        worker_id = f"{self.host}-s{next(self._numbers)}-{uuid.uuid4().hex[:6]}"
        self.children[worker_id] = subprocess.Popen(self.cmd, env={**self.env, K.ENV_WORKER_ID: worker_id})

    def forward(self, signum: int) -> None:
        for child in list(self.children.values()):
            if child.poll() is None:
                child.send_signal(signum)

    def on_sigterm(self, *_: Any) -> None:
        # Runs between two bytecodes of the main loop: from here on nothing is respawned.
        self.terminating = True
        self.forward(signal.SIGTERM)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.on_sigterm)  # before the first child exists
        queue = TaskQueue(connect_from_env(self.env), self.env[K.ENV_CLUSTER])
        for _ in range(self.slots):
            if not self.terminating:
                self.spawn()
        while not self.terminating:
            for worker_id, child in list(self.children.items()):
                code = child.poll()
                if code is None or code == 0 or self.terminating:
                    continue
                if code == EXIT_VERSION_MISMATCH or not driver_alive(queue):
                    self.stop_all(queue)
                    return code
                log.warning("slot process %s exited with %s; starting a replacement", worker_id, code)
                del self.children[worker_id]
                self.spawn()
            if all(c.poll() == 0 for c in self.children.values()):
                return 0
            time.sleep(0.2)
        log.warning("worker container got SIGTERM: its slots hand their tasks back and exit")
        self.stop_all(queue)
        return EXIT_SIGTERM

    def stop_all(self, queue: TaskQueue) -> None:
        """SIGTERM every slot, wait up to SIGTERM_GRACE, kill the rest and release their claims."""
        self.forward(signal.SIGTERM)
        deadline = time.monotonic() + SIGTERM_GRACE
        stuck = []
        for worker_id, child in self.children.items():
            try:
                child.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
                stuck.append(worker_id)
        if stuck:
            log.warning("slots %s did not exit after SIGTERM; killed them", ", ".join(stuck))
            release_claims(queue, stuck, timeout=0.8)


def release_claims(queue: TaskQueue, worker_ids: list[str], timeout: float) -> None:
    """Hand the claims of dead slots back, if Redis answers within `timeout` (else the driver's
    reaper re-queues them when their leases expire)."""

    def release() -> None:
        for worker_id in worker_ids:
            try:
                queue.release(worker_id)
                queue.leave(worker_id)
            except Exception:  # noqa: BLE001 - the server is gone too
                return

    helper = threading.Thread(target=release, daemon=True)
    helper.start()
    helper.join(timeout)


def supervise(slots: int) -> int:
    return Supervisor(slots).run()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(message)s")
    secrets_file.load()
    slots = int(os.environ.get(K.ENV_SLOTS, "1"))
    if slots > 1:
        return supervise(slots)
    return run_slot()


if __name__ == "__main__":
    sys.exit(main())
