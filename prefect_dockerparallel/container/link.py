"""Process-wide link to the cluster when this process is a worker.

The worker sets it at start; a task runner that Prefect duplicates inside a remote task's hydrated
context finds it here and reuses the worker's queue instead of provisioning a cluster of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..protocol import Signer, TaskQueue


@dataclass(frozen=True)
class WorkerLink:
    queue: TaskQueue
    signer: Signer
    worker_id: str
    lender: Any = None  # container.lending.Lender: a waiting task lends its slot


_link: WorkerLink | None = None


def set_worker_link(link: WorkerLink | None) -> None:
    global _link
    _link = link


def worker_link() -> WorkerLink | None:
    return _link
