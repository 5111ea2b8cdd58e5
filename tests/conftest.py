"""Session-wide test setup: an isolated PREFECT_HOME, one real Prefect server, real redis-server.

Every test that starts a cluster goes through `local_cluster_guard`, which fails the test if a
worker or redis-server process of this test session outlives it.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

_home = tempfile.mkdtemp(prefix="dp-test-home-")
os.environ.setdefault("PREFECT_HOME", _home)
os.environ["DOCKERPARALLEL_STATE_DIR"] = tempfile.mkdtemp(prefix="dp-test-state-")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_TO_API_BATCH_INTERVAL", "0.3")
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402

from helpers import cluster_processes, wait_until  # noqa: E402
from prefect_server import shared_server  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def prefect_server_session():
    """All tests talk to one real Prefect server (started lazily, stopped at exit)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = shared_server()
    with temporary_settings({PREFECT_API_URL: server.api_url}):
        yield server


@pytest.fixture
def no_leftover_processes():
    """Fail the test if any cluster process it started is still alive afterwards."""
    before = {p.pid for p in cluster_processes()}
    yield
    assert wait_until(lambda: not [p for p in cluster_processes() if p.pid not in before], 20), (
        f"processes left behind: {[(p.pid, p.cmdline()) for p in cluster_processes() if p.pid not in before]}"
    )
