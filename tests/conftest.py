"""Session-wide test setup: an isolated PREFECT_HOME, one real Prefect server, real redis-server.

Every test that starts a cluster goes through `local_cluster_guard`, which fails the test if a
worker or redis-server process of this test session outlives it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

_home = tempfile.mkdtemp(prefix="dp-test-home-")
os.environ.setdefault("PREFECT_HOME", _home)
os.environ["DOCKERPARALLEL_STATE_DIR"] = _state = tempfile.mkdtemp(prefix="dp-test-state-")
# The session's folders go at exit (registered first, so they go after the Prefect server stops).
atexit.register(shutil.rmtree, _home, True)
atexit.register(shutil.rmtree, _state, True)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_TO_API_BATCH_INTERVAL", "0.3")
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402

from helpers import cluster_processes, wait_until  # noqa: E402
from prefect_server import shared_server  # noqa: E402

# One real Prefect server for the whole session, set in the environment before Prefect is
# imported, so every thread (Prefect's event-loop threads too) and every subprocess sees it.
os.environ["PREFECT_API_URL"] = shared_server().api_url


@pytest.fixture(scope="session")
def prefect_server_session():
    return shared_server()


@pytest.fixture
def no_leftover_processes():
    """Fail the test if any cluster process it started is still alive afterwards."""
    before = {p.pid for p in cluster_processes()}
    yield
    assert wait_until(lambda: not [p for p in cluster_processes() if p.pid not in before], 20), (
        f"processes left behind: {[(p.pid, p.cmdline()) for p in cluster_processes() if p.pid not in before]}"
    )
