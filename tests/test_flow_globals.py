"""Issue 11 item 4: a flow's own globals need not be picklable. A flow defined in `__main__`
(pickled by value) that holds a module-level `threading.Lock` submits tasks: workers get the
flow's identity and settings, not its function. A task that itself uses such a global fails with
a message naming the global."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import cloudpickle
from prefect import flow, task

from prefect_dockerparallel import DockerParallelTaskRunner
from prefect_dockerparallel.runner.submission import _flow_for_payload, unpicklable_error

LOCK = threading.Lock()

SCRIPT = """\
import json, threading
from prefect import flow, task
from prefect_dockerparallel import DockerParallelTaskRunner

LOCK = threading.Lock()

@task
def add(a, b):
    return a + b

@flow(task_runner=DockerParallelTaskRunner(workers=1, idle_timeout=10))
def locked(n: int = 3):
    with LOCK:
        futures = add.map(range(n), 10)
    return [f.result() for f in futures]

if __name__ == "__main__":
    print("RESULT " + json.dumps(locked()))
"""


def test_the_flow_copy_for_workers_carries_no_function() -> None:
    @flow(task_runner=DockerParallelTaskRunner(workers=1))
    def uses_lock() -> None:
        with LOCK:
            pass

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        shipped = _flow_for_payload(uses_lock)
        copy = cloudpickle.loads(cloudpickle.dumps(shipped))  # the lock stays home
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert copy.name == "uses-lock" and copy.fn.__name__ == "uses_lock" and uses_lock.fn is not shipped.fn
    try:
        copy.fn()
    except RuntimeError as exc:
        assert "does not travel to the workers" in str(exc)
    else:
        raise AssertionError("the stub ran")


def test_a_task_that_uses_an_unpicklable_global_is_named() -> None:
    @task
    def needs_lock() -> None:
        with LOCK:
            pass

    error = unpicklable_error(needs_lock, {}, TypeError("cannot pickle '_thread.lock' object"))
    assert "uses the global 'LOCK' of module" in str(error) and "create it inside the task" in str(error)


def test_a_main_flow_with_a_global_lock_runs(prefect_server_session, tmp_path: Path) -> None:
    script = tmp_path / "flow_lock.py"
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=prefect_server_session.env(),
                         capture_output=True, text=True, timeout=240)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert out.returncode == 0 and lines, out.stdout[-2000:] + out.stderr[-4000:]
    assert json.loads(lines[-1][len("RESULT "):]) == [10, 11, 12]
