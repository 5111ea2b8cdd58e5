"""A blocked task lends its slot: a temporary slot runs other tasks while it waits (Dask's
secede/rejoin).

Why: a parent task that waits on a child it submitted holds its slot; with every slot held by
such parents, no slot was left to run the children and the flow deadlocked (ThreadPool's
`max_workers` has the same limit). While a task on a worker waits on a future of its own
cluster, a lent slot (a thread of the same process, with its own worker id, lease and Prefect
contexts) claims and runs tasks; when the wait ends it finishes the task it holds and leaves. So
`workers=1` completes parent -> child -> grandchild, and N parents on N slots complete. A plain
map from the flow pays nothing: lending happens only in a worker, only while a task waits.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from ..protocol import keys as K

log = logging.getLogger("prefect_dockerparallel.worker")


def lent_slot_class() -> Any:
    from .slot import WorkerSlot

    class LentSlot(WorkerSlot):
        """A WorkerSlot that claims only while its lender waits, then leaves."""

        def __init__(self, lender: Any, index: int, until: threading.Event):
            super().__init__(lender.queue, lender.signer, f"{lender.worker_id}-lent{index}", lender.idle_timeout)
            self.until = until

        def _may_claim_next(self) -> bool:
            return not self._stop.is_set() and not self.until.is_set()

        def run(self) -> int:
            self.queue.join(self.worker_id)
            beat = threading.Thread(target=self._heartbeat_loop, name="dp-heartbeat-lent", daemon=True)
            beat.start()
            try:
                envelope: bytes | None = None
                while not self._stop.is_set():
                    if envelope is None:
                        if self.until.is_set():
                            break  # the lender's wait is over: rejoin
                        envelope = self._claim()
                        if envelope is None:
                            continue
                    if envelope == K.STOP_SENTINEL:  # counted for this slot too (it joined)
                        self._request_stop("cluster stopping")
                        break
                    envelope = self.handle(envelope)
                    if envelope is not None and self.until.is_set():
                        self.queue.release(self.worker_id)  # claimed in passing: give it back
                        envelope = None
            finally:
                self._stop.set()
                self._exited.set()
                self.prefect.close()
                self._leave_cluster()
            return 0

    return LentSlot


class Lender:
    """Process-wide: lends the slot of whichever task is waiting (set by the slot at start)."""

    def __init__(self, slot: Any):
        self.slot = slot
        self._count = 0
        self._lock = threading.Lock()

    @contextmanager
    def lend(self) -> Iterator[None]:
        with self._lock:
            self._count += 1
            index = self._count
        until = threading.Event()
        lent = lent_slot_class()(self.slot, index, until)
        thread = threading.Thread(target=lent.run, name=f"dp-lent-slot-{index}", daemon=True)
        thread.start()
        log.debug("worker %s lends its slot while a task waits (%s)", self.slot.worker_id, lent.worker_id)
        try:
            yield
        finally:
            until.set()  # the lent slot finishes the task it holds, claims nothing more, leaves
