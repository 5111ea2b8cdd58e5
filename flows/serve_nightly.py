"""Serve the nightly sweep on a cron schedule from this process (no work pool needed).

    python blocks/save_examples.py --only local      # once: any ClusterConfig saved as "nightly"
    prefect block create dockerparallel-cluster-config  # ...or create "nightly" in the UI
    python flows/serve_nightly.py                    # serves 'nightly-sweep/nightly' at 02:00 UTC

Each scheduled run loads the ClusterConfig block "nightly" at its first task submission, so an
edit of that block in the Prefect UI applies to the next run without restarting this process.
`--interval SECONDS` replaces the cron schedule (handy for a demo or a test); its first run comes
`--first-run-in` seconds after start instead of one interval later.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from prefect.schedules import Cron, Interval

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sweep import nightly_sweep  # noqa: E402

DEFAULT_CRON = "0 2 * * *"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="nightly", help="deployment name")
    parser.add_argument("--cron", default=DEFAULT_CRON, help="cron schedule (UTC)")
    parser.add_argument("--interval", type=float, help="run every N seconds instead of the cron schedule")
    parser.add_argument("--first-run-in", type=float, default=5.0, help="with --interval: seconds to the first run")
    parser.add_argument("--paths", type=int, default=200_000, help="Monte Carlo paths per grid point")
    args = parser.parse_args(argv)
    if args.interval:
        anchor = datetime.now(timezone.utc) + timedelta(seconds=args.first_run_in)
        schedule = Interval(timedelta(seconds=args.interval), anchor_date=anchor)
    else:
        schedule = Cron(args.cron, timezone="UTC")
    nightly_sweep.serve(name=args.name, parameters={"paths": args.paths}, schedules=[schedule])


if __name__ == "__main__":
    main()
