"""The nested-submit deadlock warning: a task submitting children while every slot is busy."""

from __future__ import annotations

from ..container.link import WorkerLink

_nested_warning_done = False


def warn_if_nested_submit_would_deadlock(link: WorkerLink, task_name: str) -> None:
    """Warn once per worker process when a task submits a child while every slot is busy.

    Why: a parent that blocks on its child's result holds its slot; when every slot is held by
    such a parent, no slot is left to run the children (ThreadPoolTaskRunner has the same limit
    and warns the same way). Checked on the first nested submit only: two Redis round trips.
    """
    global _nested_warning_done
    if _nested_warning_done:
        return
    _nested_warning_done = True
    try:
        joined, busy = link.queue.slot_usage()
    except Exception:  # noqa: BLE001 - a warning must never fail a submit
        return
    if joined and busy >= joined:
        from .progress import run_logger_or_default  # the task run's logger: shown in the UI

        run_logger_or_default().warning(
            "Task %r was submitted from inside another task while all %d worker slots of the "
            "cluster are busy. If the parent task waits for the child's result this deadlocks, "
            "because no slot is free to run the child. Give the cluster more slots (`workers`, "
            "`workers_per_container`) than the deepest level of nested waiting, or submit the "
            "children from the flow instead of from a task.",
            task_name,
            joined,
        )
