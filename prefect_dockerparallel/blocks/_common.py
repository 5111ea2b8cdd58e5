"""What every block module shares: documentation links and the package-name check."""

from __future__ import annotations

import re

DOCS_URL = "https://github.com/prefect-dockerparallel/prefect-dockerparallel#readme"
UI_DOCS_URL = (
    "https://github.com/prefect-dockerparallel/prefect-dockerparallel"
    "#configuring-from-the-prefect-ui-and-scheduled-deployments"
)

_PACKAGE_RE = re.compile(r"^[A-Za-z0-9_.,:=<>!~+/@\[\]-]+$")


def _check_packages(field: str, packages: list[str]) -> list[str]:
    """Package names end up in a shell command at container start: allow only plain specifiers."""
    for p in packages:
        if not p or not _PACKAGE_RE.match(p):
            raise ValueError(
                f"{field}: {p!r} is not a valid package specifier; use names with optional "
                "version constraints such as 'numpy' or 'pandas>=2,<3' (no spaces or shell characters)"
            )
    return packages
