"""DockerParallelTaskRunner end to end: real Prefect server, real redis-server, real workers."""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import dataclass

import pytest
from prefect import flow, task
from prefect.futures import as_completed, wait
from prefect.utilities.annotations import allow_failure, unmapped

from prefect_dockerparallel import DockerParallelTaskRunner
from prefect_dockerparallel.runner.submission import UnpicklableParameter

pytestmark = pytest.mark.usefixtures("no_leftover_processes")


class CustomError(Exception):
    pass


@dataclass
class Point:
    x: int
    y: int


@task
def add(a: int, b: int = 0) -> int:
    return a + b


@task
def pid() -> int:
    return os.getpid()


@task
def explode(message: str) -> None:
    raise CustomError(message)


@task
async def async_double(x: int) -> int:
    await asyncio.sleep(0.01)
    return 2 * x


@task
def norm(p: Point) -> int:
    return p.x * p.x + p.y * p.y


@task
def finish_after(value: int, gate: str | None) -> int:
    """Returns once the file `gate` exists (None: at once). The flow writes the gates as it sees
    results, so the test fixes the order in which tasks complete; sleep durations do not (a loaded
    machine reordered 1.5 s / 0.1 s / 0.8 s sleeps)."""
    import time

    deadline = time.monotonic() + 60
    while gate and not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} never opened")
        time.sleep(0.02)
    return value


@task(timeout_seconds=1)
def too_slow() -> None:
    import time

    time.sleep(30)


@task(retries=2, retry_delay_seconds=0)
def flaky(marker_dir: str) -> int:
    """Fails on the first two attempts; counts attempts with files (attempts may hop workers)."""
    attempts = len(os.listdir(marker_dir))
    open(os.path.join(marker_dir, str(attempts)), "w").close()
    if attempts < 2:
        raise CustomError(f"attempt {attempts}")
    return attempts


@task
def submit_children(n: int) -> list[int]:
    futures = [add.submit(i, 100) for i in range(n)]
    return [f.result() for f in futures]


@task
def unpicklable_result() -> object:
    return threading.Lock()


def runner(**kw):
    kw.setdefault("workers", 2)
    return DockerParallelTaskRunner(**kw)


def test_success_failure_async_and_dataclass_in_one_flow():
    @flow(task_runner=runner())
    def mixed():
        ok = add.submit(2, 3)
        bad = explode.submit("kaboom")
        coro = async_double.submit(21)
        dc = norm.submit(Point(3, 4))
        return ok.result(), bad.result(raise_on_failure=False), coro.result(), dc.result(), pid.submit().result()

    ok, bad, coro, dc, worker_pid = mixed()
    assert ok == 5
    assert isinstance(bad, CustomError) and str(bad) == "kaboom"
    assert coro == 42
    assert dc == 25
    assert worker_pid != os.getpid()


def test_failure_surfaces_original_exception_type():
    @flow(task_runner=runner())
    def failing():
        return explode.submit("original message").result()

    with pytest.raises(CustomError, match="original message"):
        failing()


def test_timeout_and_retries():
    import tempfile

    marker_dir = tempfile.mkdtemp()

    @flow(task_runner=runner())
    def f():
        slow = too_slow.submit()
        retried = flaky.submit(marker_dir)
        slow.wait()
        return slow.state, retried.result()

    slow_state, attempts = f()
    assert slow_state.is_failed() and slow_state.name == "TimedOut"
    assert attempts == 2  # third run succeeded after two failures


def test_as_completed_order_and_wait_for_and_allow_failure(tmp_path):
    @flow(task_runner=runner(workers=3))
    def f():
        gates = [str(tmp_path / "seen-2"), None, str(tmp_path / "seen-1")]  # completes 1, 2, 0
        futures = [finish_after.submit(i, gate) for i, gate in enumerate(gates)]
        order = []
        for fut in as_completed(futures):
            order.append(fut.result())
            (tmp_path / f"seen-{order[-1]}").touch()
        first = explode.submit("upstream failed")
        after = add.submit(1, 1, wait_for=[allow_failure(first)])
        blocked = add.submit(2, 2, wait_for=[first])
        done, not_done = wait([after, blocked], timeout=60)
        return order, after.result(), blocked.state

    order, after, blocked_state = f()
    assert order == [1, 2, 0]
    assert after == 2
    assert not blocked_state.is_completed()


def test_upstream_futures_as_parameters_and_unmapped():
    @flow(task_runner=runner())
    def f():
        base = add.submit(10, 5)
        chained = add.submit(base, 1)  # a future as a parameter
        mapped = add.map([1, 2, 3], unmapped(base))
        return chained.result(), mapped.result()

    chained, mapped = f()
    assert chained == 16
    assert mapped == [16, 17, 18]


def test_nested_submission_inside_a_remote_task():
    @flow(task_runner=runner(workers=3))
    def f():
        return submit_children.submit(3).result()

    assert f() == [100, 101, 102]


def test_five_hundred_mapped_tasks():
    @flow(task_runner=runner())
    def f():
        return add.map(range(500), unmapped(1)).result()

    assert f() == [i + 1 for i in range(500)]


def test_unpicklable_result_becomes_a_clear_failed_state():
    @flow(task_runner=runner())
    def f():
        fut = unpicklable_result.submit()
        fut.wait()
        return fut.state.is_failed(), fut.state.message  # returning a Failed state fails the flow

    failed, message = f()
    assert failed
    assert "could not be serialized" in message


def test_async_flow():
    @flow(task_runner=runner())
    async def f():
        futures = async_double.map([1, 2, 3])
        return futures.result()

    assert asyncio.run(f()) == [2, 4, 6]


def test_workers_are_told_the_drivers_api_url():
    """Task runs executed on workers are recorded by the same Prefect server."""
    from prefect import get_client

    @flow(task_runner=runner())
    def f():
        fut = add.submit(1, 2)
        fut.wait()
        return fut.task_run_id

    task_run_id = f()
    with get_client(sync_client=True) as client:
        from helpers import wait_until

        run = wait_until(lambda: _read(client, task_run_id), 30, interval=0.2)
    assert run is not None and run.state.is_completed()


def _read(client, task_run_id):
    try:
        run = client.read_task_run(task_run_id)
        return run if run.state and run.state.is_completed() else None
    except Exception:
        return None


# -- bad input: clear errors naming the field, before anything is provisioned --------------
def test_negative_workers_is_rejected():
    with pytest.raises(ValueError, match="workers=-1"):
        DockerParallelTaskRunner(workers=-1)


def test_unknown_provider_is_rejected():
    with pytest.raises(ValueError, match="provider"):
        DockerParallelTaskRunner(provider="gcp")

    class Weird:
        kind = "gcp"

    with pytest.raises(ValueError, match="'gcp' is unknown"):
        DockerParallelTaskRunner(provider=Weird())


def test_unknown_argument_is_rejected():
    with pytest.raises(TypeError, match="worker_count"):
        DockerParallelTaskRunner(worker_count=3)


def test_unpicklable_parameter_names_the_parameter():
    @flow(task_runner=runner(workers=1))
    def f():
        return add.submit(threading.Lock(), 1)

    with pytest.raises(UnpicklableParameter, match="parameter 'a' of task 'add'"):
        f()


def test_payload_over_the_limit_is_rejected():
    @flow(task_runner=runner(workers=1, max_payload_bytes=10_000))
    def f():
        return add.submit(b"x" * 50_000, b"")

    with pytest.raises(ValueError, match="max_payload_bytes=10000"):
        f()


def test_runner_pickles_without_provider_or_secrets():
    import cloudpickle
    from pydantic import SecretStr

    from prefect_dockerparallel import LocalProvider

    from prefect_dockerparallel import ECSFargateProvider

    r = DockerParallelTaskRunner(provider=LocalProvider(), workers=2)
    shipped = cloudpickle.loads(cloudpickle.dumps(r.payload_copy()))
    assert shipped.overrides == {} and shipped._shipped
    assert r == r.duplicate()
    assert cloudpickle.loads(cloudpickle.dumps(r)) == r  # flow.serve subprocesses keep the config
    named = cloudpickle.loads(cloudpickle.dumps(DockerParallelTaskRunner("nightly").payload_copy()))
    assert named.cluster == "nightly"
    secret = "AKIA-very-secret-value"
    ecs = DockerParallelTaskRunner(provider=ECSFargateProvider(aws_secret_access_key=SecretStr(secret)))
    assert secret.encode() not in cloudpickle.dumps(ecs.payload_copy())


@task
def shipped_runner_state() -> tuple[bool, dict]:
    from prefect.context import FlowRunContext

    runner = FlowRunContext.get().flow.task_runner
    return runner._shipped, runner.overrides


def test_task_payloads_carry_the_stripped_runner():
    @flow(task_runner=runner(workers=1, idle_timeout=30))
    def f():
        return shipped_runner_state.submit().result()

    shipped, overrides = f()
    assert shipped and overrides == {}


@task
def client_and_settings_identity(i: int) -> tuple[int, int, int, int]:
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext, SettingsContext

    return (
        os.getpid(),
        id(get_client(sync_client=True)),
        id(SettingsContext.get()),
        id(FlowRunContext.get()),
    )


def test_workers_reuse_one_client_settings_and_flow_context_per_flow_run():
    """No per-task API client, SSL context or Settings validation on the workers."""

    @flow(task_runner=runner())
    def f():
        return client_and_settings_identity.map(range(40)).result()

    by_pid: dict[int, set] = {}
    for pid, *ids in f():
        by_pid.setdefault(pid, set()).add(tuple(ids))
    assert by_pid and all(len(ids) == 1 for ids in by_pid.values()), by_pid


@task
def length_plus(i: int, blob: bytes) -> int:
    return len(blob) + i


def test_large_unmapped_argument_is_uploaded_once():
    size = 5 * 2**20

    @flow(task_runner=runner())
    def f():
        from prefect.context import FlowRunContext

        big = b"x" * size
        add.submit(0, 0).result()  # the cluster is up
        redis_client = FlowRunContext.get().task_runner.docker_cluster.queue.redis
        before = redis_client.info("stats")["total_net_input_bytes"]
        out = length_plus.map(range(50), unmapped(big)).result()
        return out, redis_client.info("stats")["total_net_input_bytes"] - before

    out, written = f()
    assert out == [size + i for i in range(50)]
    assert written < 2 * size, f"{written} bytes written for 50 tasks sharing one {size}-byte argument"


def test_every_task_run_reaches_the_api_as_completed():
    """Workers flush their state events before teardown: no task run is left Running in the UI."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from helpers import wait_until

    @flow(task_runner=runner())
    def f():
        from prefect.context import FlowRunContext

        add.map(range(30), unmapped(1)).result()
        return FlowRunContext.get().flow_run.id

    flow_run_id = f()

    def completed_count():
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        return sum(1 for r in runs if r.state and r.state.is_completed())

    assert wait_until(lambda: completed_count() == 30, 30, interval=0.5), completed_count()


@task(log_prints=True)
def chatty(i: int) -> int:
    from prefect.logging import get_run_logger

    get_run_logger().info("logger line from task %d", i)
    print(f"printed line from task {i}")
    return i


def test_task_logs_and_prints_reach_the_api_like_thread_pool():
    """A worker sends its task runs' logs to the API, linked to the task run (what the UI shows)."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from helpers import wait_until

    @flow(task_runner=runner())
    def f():
        from prefect.context import FlowRunContext

        chatty.map(range(3)).result()
        return FlowRunContext.get().flow_run.id

    flow_run_id = f()

    def task_messages() -> set[str]:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        return {log.message for log in logs if log.task_run_id is not None}

    expected = {f"logger line from task {i}" for i in range(3)} | {f"printed line from task {i}" for i in range(3)}
    found = wait_until(lambda: expected <= task_messages(), 30, interval=0.5)
    assert found, f"missing task logs in the API: {sorted(expected - task_messages())}"
