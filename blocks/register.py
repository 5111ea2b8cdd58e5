"""Register the five DockerParallel block types with the Prefect API in PREFECT_API_URL.

Same effect as `prefect block register -m prefect_dockerparallel`; useful where the package is
not installed as a distribution (so the `prefect.collections` entry point that lets a server
auto-register it is absent). Re-running updates the schemas in place.

    python blocks/register.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect_dockerparallel.blocks import BLOCK_TYPES  # noqa: E402


def register() -> list[str]:
    """Register every block type (nested ones first); returns their slugs."""
    slugs = []
    for block_type in BLOCK_TYPES:
        block_type.register_type_and_schema()
        slugs.append(block_type.get_block_type_slug())
    return slugs


if __name__ == "__main__":
    for slug in register():
        print(f"registered {slug}")
