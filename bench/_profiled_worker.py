"""Run a worker slot under cProfile (bench/throughput.py --profile-workers DIR).

The stats are written when the slot returns and also right before the `os._exit` calls of the
SIGTERM / stuck-task paths, so a profile survives the cluster's normal teardown.
"""

from __future__ import annotations

import cProfile
import os
import sys

out_dir = os.environ["DP_BENCH_PROFILE_DIR"]
prof = cProfile.Profile()
_real_exit = os._exit


def _dump() -> None:
    prof.disable()
    prof.dump_stats(os.path.join(out_dir, f"worker-{os.getpid()}.prof"))


def _exit(code: int) -> None:
    _dump()
    _real_exit(code)


os._exit = _exit  # type: ignore[assignment]

from prefect_dockerparallel.container import worker  # noqa: E402

prof.enable()
try:
    code = worker.main()
finally:
    _dump()
sys.exit(code)
