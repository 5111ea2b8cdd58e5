"""Zero-build workers in real containers (DockerProvider): the worker image is the `prefect`
stand-in (Prefect, no prefect-dockerparallel); the bootstrap fetches the package and the user's
code from the cluster's Redis. The server runs on the dev image (its stock-Redis form is another
change). A baked image skips the fetch; a version mismatch names the image to use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from containers import OWNER_LABEL, docker_engine, docker_tracker, image_of, test_images  # noqa: F401
from docker_support import container_api, dev_worker_image, ship_by_value  # noqa: F401
from helpers import wait_until

from prefect_dockerparallel import DockerCluster, DockerProvider
from prefect_dockerparallel.protocol import keys as K
from prefect_dockerparallel.specs import ContainerSpec

ship_by_value(__name__)
REPO = Path(__file__).resolve().parent.parent


def whence() -> dict[str, str]:
    import prefect_dockerparallel

    return {"package": prefect_dockerparallel.__file__, "shipped": os.environ.get(K.ENV_SHIPPED, "")}


def _cluster(tracker, image: str, server_image: str, **container) -> DockerCluster:
    spec = ContainerSpec(image=image, server_image=server_image, workers_per_container=1, install_self=None, **container)
    return DockerCluster(
        provider=DockerProvider(start_timeout=60, pull="never"), container=spec, workers=1, idle_timeout=30,
        worker_cpu=1024, worker_memory=512, tags={OWNER_LABEL: tracker.owner},
    )


def test_stock_prefect_image_gets_the_package_from_redis(docker_tracker, test_images, dev_worker_image):
    cluster = _cluster(docker_tracker, image_of(test_images, "prefect"), dev_worker_image, ship_code=False)
    try:
        t0 = time.monotonic()
        cluster.start()
        assert cluster.shipment.uploaded and "prefect_dockerparallel" in cluster.shipment.uploaded
        assert wait_until(lambda: cluster.worker_numbers().running == 1, 120), cluster.logs()
        print(f"\nstock image + self-shipping: start -> worker joined in {time.monotonic() - t0:.1f} s; "
              f"shipped {cluster.shipment.bytes_uploaded} bytes")
        with cluster.executor() as ex:
            got = ex.submit(whence).result(timeout=60)
        assert got["package"].startswith("/tmp/dp-ship-"), got
        assert got["shipped"].startswith("prefect_dockerparallel="), got
        logs = cluster.logs()
        assert "bootstrap fetched prefect_dockerparallel" in logs and "from Redis" in logs and "verified; not in the image" in logs
        assert "pip install" not in logs
        # another driver attaching to the running cluster finds the archives there: nothing uploaded
        again = DockerCluster(provider=cluster.driver, container=cluster.spec.container, name=cluster.name,
                              stop_on_exit=False).reconnect()
        try:
            assert again.shipment.bytes_uploaded == 0 and "prefect_dockerparallel" in again.shipment.present
        finally:
            again.disconnect()
    finally:
        cluster.stop()


def test_baked_image_skips_the_fetch(docker_tracker, dev_worker_image):
    cluster = _cluster(docker_tracker, dev_worker_image, dev_worker_image, ship_code=False)
    try:
        t0 = time.monotonic()
        cluster.start()
        assert wait_until(lambda: cluster.worker_numbers().running == 1, 120), cluster.logs()
        print(f"\nbaked image: start -> worker joined in {time.monotonic() - t0:.1f} s")
        with cluster.executor() as ex:
            got = ex.submit(whence).result(timeout=60)
        assert not got["package"].startswith("/tmp/dp-ship-") and got["shipped"] == "none", got
        assert "with the driver's sources: nothing fetched" in cluster.logs()
    finally:
        cluster.stop()


def test_version_mismatch_names_both_versions_and_the_image(docker_tracker, test_images, dev_worker_image):
    cluster = _cluster(docker_tracker, image_of(test_images, "prefect"), dev_worker_image, ship_code=False)
    cluster.extra_meta["prefect"] = "3.8.0"  # as a driver on Prefect 3.8.0 would publish
    try:
        cluster.start()
        errors = wait_until(lambda: cluster.queue.redis.lrange(cluster.queue.keys.errors, 0, -1), 120)
        message = errors[0].decode()
        py = f"{sys.version_info.major}.{sys.version_info.minor}"
        assert "prefect: driver 3.8.0, worker 3.9.1" in message, message
        assert f"use the image prefecthq/prefect:3.8.0-python{py}" in message, message
    finally:
        cluster.stop()


FLOW = """\
import json, os, sys
from prefect import flow, task
from prefect.context import FlowRunContext
from prefect_dockerparallel import DockerParallelTaskRunner, DockerProvider
from prefect_dockerparallel.specs import ContainerSpec

import helpers
from mylib import scale

@task
def work(x):
    import helpers, mylib.extra
    return {"value": helpers.triple(x) + mylib.extra.OFFSET, "helpers": helpers.__file__,
            "shipped": os.environ.get("DOCKERPARALLEL_SHIPPED")}

runner = DockerParallelTaskRunner(
    provider=DockerProvider(start_timeout=60, pull="never"),
    container=ContainerSpec(image=sys.argv[1], server_image=sys.argv[2], workers_per_container=2, install_self=None),
    workers=2, worker_memory=512, idle_timeout=30, tags={"dp-test-owner": sys.argv[3]})

@flow(task_runner=runner)
def shipped_flow(n: int = 4):
    results = [f.result() for f in work.map(range(n))]
    shipment = FlowRunContext.get().task_runner.docker_cluster.shipment
    return results, shipment.uploaded, shipment.manifest["code"]

if __name__ == "__main__":
    results, uploaded, code = shipped_flow()
    print("RESULT " + json.dumps({"results": results, "uploaded": uploaded, "code": code}))
"""


def _project(root: Path) -> Path:
    project = root / "project"
    (project / "mylib").mkdir(parents=True)
    (project / "flow.py").write_text(FLOW)
    (project / "helpers.py").write_text("def triple(x):\n    return 3 * x\n")
    (project / "mylib" / "__init__.py").write_text("from .core import scale\n")
    (project / "mylib" / "core.py").write_text("def scale(x):\n    return x\n")
    (project / "mylib" / "extra.py").write_text("OFFSET = 100\n")  # imported only inside the task
    return project


def _run_flow(project: Path, cwd: Path, args: list[str], api_url: str) -> dict:
    env = {**os.environ, "PREFECT_API_URL": api_url, "PYTHONPATH": ""}
    out = subprocess.run([sys.executable, str(project / "flow.py"), *args], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=300)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert out.returncode == 0 and lines, out.stdout[-3000:] + out.stderr[-5000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_python_flow_py_from_elsewhere_ships_the_users_code(docker_tracker, test_images, dev_worker_image,
                                                             container_api, tmp_path):
    project = _project(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    args = [image_of(test_images, "prefect"), dev_worker_image, docker_tracker.owner]
    first = _run_flow(project, elsewhere, args, container_api.api_url)
    assert [r["value"] for r in first["results"]] == [100, 103, 106, 109]
    assert all(r["helpers"].startswith("/tmp/dp-ship-") for r in first["results"]), first
    assert all("user-code=" in r["shipped"] and "prefect_dockerparallel=" in r["shipped"] for r in first["results"])
    assert first["code"]["roots"] == ["helpers.py", "mylib"] and first["code"]["files"] == 4
    print(f"\nfirst run uploaded {first['uploaded']}")
    # A second run gets a new cluster and so a fresh Redis: the same archives (same digests)
    # are uploaded again; what is skipped is an upload to a cluster that already holds them.
    second = _run_flow(project, elsewhere, args, container_api.api_url)
    assert second["code"]["digest"] == first["code"]["digest"] and second["uploaded"] == first["uploaded"]


SERVED = """\
import json, os
from pathlib import Path
from prefect import flow, task
from prefect_dockerparallel import DockerParallelTaskRunner, DockerProvider
from prefect_dockerparallel.specs import ContainerSpec

import helpers

@task
def work(x):
    return {"value": helpers.triple(x), "helpers": helpers.__file__}

runner = DockerParallelTaskRunner(
    provider=DockerProvider(start_timeout=60, pull="never"),
    container=ContainerSpec(image=os.environ["DP_IMAGE"], server_image=os.environ["DP_SERVER_IMAGE"], workers_per_container=1,
                            install_self=None),
    workers=1, worker_memory=512, idle_timeout=30, tags={"dp-test-owner": os.environ["DP_OWNER"]})

@flow(task_runner=runner)
def served_flow(out: str, n: int = 3):
    Path(out).write_text(json.dumps([f.result() for f in work.map(range(n))]))

if __name__ == "__main__":
    served_flow.serve(name=os.environ["DP_DEPLOYMENT"])
"""


def test_served_deployment_ships_the_flow_file_and_its_helpers(docker_tracker, test_images, dev_worker_image,
                                                               container_api, tmp_path):
    """flow.serve: Prefect loads the flow file by path in a subprocess (module `flow`, not
    `__main__`), so tasks pickle by reference to it: the flow file ships too."""
    import signal
    import uuid

    from prefect.client.orchestration import get_client

    project = tmp_path / "project"
    project.mkdir()
    (project / "flow.py").write_text(SERVED)
    (project / "helpers.py").write_text("def triple(x):\n    return 3 * x\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    name = f"ship-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "PREFECT_API_URL": container_api.api_url, "PREFECT_RUNNER_POLL_FREQUENCY": "1",
           "PYTHONPATH": "", "DP_IMAGE": image_of(test_images, "prefect"), "DP_SERVER_IMAGE": dev_worker_image,
           "DP_OWNER": docker_tracker.owner, "DP_DEPLOYMENT": name}
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, str(project / "flow.py")], cwd=elsewhere, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    out = tmp_path / "out.json"
    try:
        def deployment():
            with get_client(sync_client=True) as client:
                try:
                    return client.read_deployment_by_name(f"served-flow/{name}")
                except Exception:  # noqa: BLE001 - not registered yet
                    return None

        found = wait_until(deployment, timeout=90, interval=0.5)
        assert found, (tmp_path / "serve.log").read_text()[-3000:]
        with get_client(sync_client=True) as client:
            run = client.create_flow_run_from_deployment(found.id, parameters={"out": str(out)})

        def final_state():
            with get_client(sync_client=True) as client:
                state = client.read_flow_run(run.id).state
            return state if state and state.is_final() else None

        state = wait_until(final_state, timeout=300, interval=1)
        assert state and state.is_completed() and out.exists(), (state, (tmp_path / "serve.log").read_text()[-5000:])
        results = json.loads(out.read_text())
        assert [r["value"] for r in results] == [0, 3, 6]
        assert all(r["helpers"].startswith("/tmp/dp-ship-") for r in results), results
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
