"""The user's own modules: found among the flow's imports, archived for the workers.

A module is the user's when it lives outside the standard library and every site-packages
directory (the flow's project folder, an editable install). What ships is its top-level unit: the
whole top-level package folder (so submodules imported later inside a task are there too) or the
single top-level module file, under the name it is imported by. Folders and files given
explicitly (`code_paths`) ship the same way, under their own names. Excluded: `.git`, virtualenvs,
caches and what `.gitignore` ignores (asked of `git` when the folder is in a repository).
"""

from __future__ import annotations

import logging
import os
import site
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Iterable, Mapping

from ..container.bootstrap import PACKAGE
from ..protocol.archives import Archive
from .package import zip_files

log = logging.getLogger("prefect_dockerparallel.shipping")

EXCLUDED_DIRS = {
    ".git", ".hg", ".svn", "__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".tox",
    ".nox", ".venv", "venv", "node_modules", ".ipynb_checkpoints", ".eggs", "build", "dist",
}
EXCLUDED_SUFFIXES = (".pyc", ".pyo")
SIZE_SETTING = "WorkerContainer(max_code_mb=...)"


class CodeTooLarge(ValueError):
    """The user's code exceeds the cap; the message names the largest files and the setting."""


@dataclass(frozen=True)
class Unit:
    """One top-level importable thing: `name` (arc root) at `path` (a folder or a file)."""

    name: str
    path: Path


@lru_cache(maxsize=1)
def library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    dirs.update(site.getsitepackages() if hasattr(site, "getsitepackages") else [])
    dirs.add(site.getusersitepackages() if hasattr(site, "getusersitepackages") else "")
    dirs.update({sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix})
    return tuple(sorted(os.path.realpath(d) for d in dirs if d))


def is_library(path: str) -> bool:
    real = os.path.realpath(path)
    parts = Path(real).parts
    if "site-packages" in parts or "dist-packages" in parts:
        return True
    return any(real == d or real.startswith(d + os.sep) for d in library_dirs())


def unit_of(name: str, module: ModuleType) -> list[Unit]:
    """The top-level unit(s) of a top-level module that is the user's (none if it is not)."""
    if name in ("__main__", "__mp_main__", PACKAGE):
        return []
    file = getattr(module, "__file__", None)
    if file and file.endswith(".py") and os.path.basename(file) != "__init__.py":
        # a module file (also a flow file Prefect loaded by path for a deployment, which it gives
        # a __path__ of the file's folder and the working directory: not a package)
        return [Unit(f"{name}.py", Path(file))] if os.path.isfile(file) and not is_library(file) else []
    locations = list(getattr(module, "__path__", None) or [])
    # a package, possibly a namespace package spread over folders
    return [Unit(name, Path(p)) for p in locations if os.path.isdir(p) and not is_library(p)]


def detect(modules: Mapping[str, ModuleType] | None = None) -> list[Unit]:
    """The user's top-level units among the imported modules (sys.modules by default)."""
    modules = dict(sys.modules if modules is None else modules)
    units: dict[tuple[str, str], Unit] = {}
    for name, module in modules.items():
        if "." in name or module is None:
            continue
        for unit in unit_of(name, module):
            units.setdefault((unit.name, str(unit.path)), unit)
    return sorted(units.values(), key=lambda u: (u.name, str(u.path)))


def explicit(paths: Iterable[str]) -> list[Unit]:
    """Units for `code_paths` (relative paths are the driver's working directory's)."""
    out = []
    for raw in paths:
        path = Path(raw).expanduser().resolve()
        if not path.exists():
            raise ValueError(f"code_paths: {raw!r} does not exist (resolved to {path}); give a folder or a .py file")
        out.append(Unit(path.name, path))
    return out


def _git_listing(folder: Path) -> set[Path] | None:
    """Files git would keep in `folder` (tracked + untracked not ignored), or None outside git."""
    try:
        out = subprocess.run(
            ["git", "-C", str(folder), "ls-files", "-z", "--cached", "--others", "--exclude-standard", "."],
            capture_output=True, timeout=20, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {(folder / rel).resolve() for rel in out.decode(errors="surrogateescape").split("\0") if rel}


def unit_files(unit: Unit) -> dict[str, Path]:
    """arcname -> file of one unit, with the exclusions applied."""
    if unit.path.is_file():
        return {unit.name: unit.path}
    keep = _git_listing(unit.path)
    out: dict[str, Path] = {}
    for folder, dirs, names in os.walk(unit.path):
        dirs[:] = sorted(
            d for d in dirs if d not in EXCLUDED_DIRS and not os.path.exists(os.path.join(folder, d, "pyvenv.cfg"))
        )
        for name in names:
            path = Path(folder, name)
            if name.endswith(EXCLUDED_SUFFIXES) or not path.is_file():
                continue
            if keep is not None and path.resolve() not in keep:
                continue  # ignored by .gitignore
            out[f"{unit.name}/{path.relative_to(unit.path).as_posix()}"] = path
    return out


def collect(units: list[Unit], max_bytes: int) -> dict[str, Path]:
    """Every file to ship; CodeTooLarge when they add up to more than `max_bytes`."""
    files: dict[str, Path] = {}
    for unit in units:
        for arcname, path in unit_files(unit).items():
            files.setdefault(arcname, path)  # first wins, as on sys.path
    sizes = {arc: path.stat().st_size for arc, path in files.items()}
    total = sum(sizes.values())
    if total > max_bytes:
        largest = sorted(sizes.items(), key=lambda kv: -kv[1])[:5]
        listing = ", ".join(f"{files[a]} ({s / 2**20:.1f} MB)" for a, s in largest)
        raise CodeTooLarge(
            f"the code to ship to the workers is {total / 2**20:.1f} MB, over the cap of "
            f"{max_bytes / 2**20:.0f} MB ({SIZE_SETTING}); largest files: {listing}. Add them to "
            "a .gitignore, move data to object storage, raise max_code_mb, or choose what ships "
            "with code_paths=[...] and ship_code=False"
        )
    return files


_cache: dict[tuple, Archive] = {}


def code_archive(units: list[Unit], max_bytes: int) -> Archive | None:
    """The user's code as one archive; rebuilt only when a file's size or mtime changed."""
    files = collect(units, max_bytes)
    if not files:
        return None
    signature = tuple(sorted((a, str(p), p.stat().st_size, p.stat().st_mtime_ns) for a, p in files.items()))
    archive = _cache.get(signature)
    if archive is None:
        roots = sorted({u.name for u in units})
        archive = Archive(name="user-code", data=zip_files(files), meta=(("roots", roots), ("files", len(files))))
        _cache.clear()
        _cache[signature] = archive
    return archive
