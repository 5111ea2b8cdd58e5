"""One real Prefect server per test session, shared by every module that needs one.

Why not `prefect_test_harness`: its ephemeral server does not run the scheduler service, so a
deployment's schedule would never produce a run. This starts `prefect server start` (all
services, short loop intervals, a throw-away SQLite database and PREFECT_HOME) once, lazily,
and stops its whole process group at interpreter exit, even after failures.

Use it from a test module with::

    from prefect_server import prefect_api  # noqa: F401  (a module-scoped fixture)
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import httpx
import pytest

VENV_BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


@dataclass
class PrefectServer:
    api_url: str
    home: Path
    process: subprocess.Popen

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a subprocess (a served deployment, a CLI call) that uses this server."""
        env = dict(os.environ)
        env.update(
            PREFECT_API_URL=self.api_url,
            PREFECT_HOME=str(self.home),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        )
        env.pop("PREFECT_PROFILE", None)
        env.update(extra)
        return env


_server: Optional[PrefectServer] = None


def _prefect_version() -> str:
    from importlib.metadata import version

    return version("prefect")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """Linux: SIGTERM the server when the test process dies without running atexit (SIGKILL).

    The signal fires when the *thread* that started the server ends, so call `shared_server()`
    first from the main thread (conftest does, at import)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def stop_server(server: PrefectServer) -> None:
    if server.process.poll() is None:
        try:
            os.killpg(server.process.pid, signal.SIGTERM)
            server.process.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(server.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            server.process.wait(timeout=10)
    shutil.rmtree(server.home, ignore_errors=True)  # its database and log: nothing left in the temp dir


def shared_server(timeout: float = 90.0) -> PrefectServer:
    """Start (once) and return the session's Prefect server."""
    global _server
    if _server is not None and _server.process.poll() is None:
        return _server
    _server = start_server(timeout=timeout)
    return _server


def start_server(timeout: float = 90.0, ui: bool = False) -> PrefectServer:
    """Start a Prefect server of its own (the caller stops it with `stop_server`); with `ui`, it
    also serves both UIs, pointed at its own port."""
    home = Path(tempfile.mkdtemp(prefix="dp-prefect-home-"))
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_PROFILE", None)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        PREFECT_UI_ENABLED="true" if ui else "false",
        # The UI bundles (~30 MB) are copied once per machine and Prefect version, not per server.
        PREFECT_UI_STATIC_DIRECTORY=str(Path(tempfile.gettempdir()) / f"dp-prefect-ui-{_prefect_version()}"),
        PREFECT_SERVER_UI_API_URL=api_url,  # the UI calls this API (needed off the default port)
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_LOGGING_LEVEL="WARNING",
        # Schedules must turn into runs within seconds, not the default minute.
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2",
        PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS="1",
    )
    log = open(home / "server.log", "wb")
    process = subprocess.Popen(
        [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: one killpg stops uvicorn and services
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )
    server = PrefectServer(api_url=api_url, home=home, process=process)
    atexit.register(stop_server, server)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited: {(home / 'server.log').read_text()[-3000:]}")
        try:
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.25)  # polling interval while waiting for the port, not synchronisation
    tail = (home / "server.log").read_text()[-3000:]  # before stop_server removes the home
    stop_server(server)
    raise RuntimeError(f"prefect server did not answer within {timeout}s: {tail}")


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[PrefectServer]:
    """Point this process's Prefect client at the shared server for the module's tests."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = shared_server()
    with temporary_settings({PREFECT_API_URL: server.api_url}):
        yield server
