"""What every block module shares: documentation links and the package-name checks."""

from __future__ import annotations

from ..specs import check_pip_requirement, check_system_package

DOCS_URL = "https://github.com/prefect-dockerparallel/prefect-dockerparallel#readme"
UI_DOCS_URL = (
    "https://github.com/prefect-dockerparallel/prefect-dockerparallel"
    "#configuring-from-the-prefect-ui-and-scheduled-deployments"
)


def _check_packages(field: str, packages: list[str]) -> list[str]:
    """Package names reach pip / apt-get at container start: requirements and names, never options.

    `system_packages` are Debian package names; everything else (pip_packages, install_self) is a
    PEP 508 requirement. The specs run the same checks, so a ContainerSpec built directly is safe too.
    """
    check = check_system_package if field == "system_packages" else check_pip_requirement
    for p in packages:
        check(field, p)
    return packages
