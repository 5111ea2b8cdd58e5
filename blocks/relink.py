"""Re-save ClusterConfig documents in the shape the Prefect UIs can edit without losing data.

    python blocks/relink.py              # every ClusterConfig on the server in PREFECT_API_URL
    python blocks/relink.py nightly      # just these

A document saved by an older version stores its provider and container inline: the UI shows
them as empty pickers and its V1 form drops them on save. This loads each document (with its
secrets), saves the nested blocks as their own blocks (`<name>-provider`, `<name>-container`,
or the blocks they already reference) stamped with their own reference, and saves the config
so that it references them. Idempotent; a document that cannot load is reported, not touched.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect.client.orchestration import get_client  # noqa: E402

from prefect_dockerparallel.blocks import ClusterConfig  # noqa: E402


def cluster_config_names() -> list[str]:
    with get_client(sync_client=True) as client:
        documents = client.read_block_documents_by_type(ClusterConfig.get_block_type_slug(), include_secrets=False)
    return sorted(d.name for d in documents if d.name and not d.is_anonymous)


def relink(names: list[str] | None = None) -> dict[str, str]:
    """Re-save each ClusterConfig; returns name -> "relinked" or the reason it was skipped."""
    outcome = {}
    for name in names or cluster_config_names():
        try:
            config = ClusterConfig.load(name)
        except ValueError as exc:
            outcome[name] = f"skipped: {exc}"
            continue
        config.save(name, overwrite=True)
        outcome[name] = "relinked"
    return outcome


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="ClusterConfig block names (default: all)")
    args = parser.parse_args()
    failed = False
    for name, result in relink(args.names).items():
        print(f"{name}: {result}")
        failed = failed or result != "relinked"
    sys.exit(1 if failed else 0)
