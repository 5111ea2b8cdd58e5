"""Serve the nightly sweep on a cron schedule from this process (no work pool needed).

    python blocks/save_examples.py --only local      # once: any ClusterConfig saved as "nightly"
    prefect block create dockerparallel-cluster-config  # ...or create "nightly" in the UI
    python flows/serve_nightly.py                    # serves 'nightly-sweep/nightly' at 02:00 UTC

Each scheduled run loads the ClusterConfig block "nightly" at its first task submission, so an
edit of that block in the Prefect UI applies to the next run without restarting this process.
`--interval SECONDS` replaces the cron schedule (handy for a demo or a test).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sweep import nightly_sweep  # noqa: E402

DEFAULT_CRON = "0 2 * * *"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="nightly", help="deployment name")
    parser.add_argument("--cron", default=DEFAULT_CRON, help="cron schedule (UTC)")
    parser.add_argument("--interval", type=float, help="run every N seconds instead of the cron schedule")
    parser.add_argument("--paths", type=int, default=200_000, help="Monte Carlo paths per grid point")
    args = parser.parse_args(argv)
    schedule = {"interval": args.interval} if args.interval else {"cron": args.cron}
    nightly_sweep.serve(name=args.name, parameters={"paths": args.paths}, **schedule)


if __name__ == "__main__":
    main()
