"""Archives of this package and of the pure-Python dependencies a stock Prefect image lacks.

Built once per driver process (the sources do not change under a running flow) as deterministic
zips: the same sources give the same digest, so a reconnected cluster already holds them.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import io
import os
import re
import zipfile
from functools import lru_cache
from pathlib import Path

from ..container.bootstrap import PACKAGE, tree_digest
from ..protocol.archives import Archive

# What the container side imports besides the standard library and Prefect.
CONTAINER_DEPS = {"redis": "redis", "cloudpickle": "cloudpickle"}  # distribution -> module
_SKIP_DIRS = {"__pycache__"}
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def zip_files(files: dict[str, Path]) -> bytes:
    """A deterministic zip of arcname -> file (sorted, fixed timestamps and modes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, files[name].read_bytes())
    return buf.getvalue()


def tree_files(root: Path, arcroot: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS]
        for name in names:
            if not name.endswith((".pyc", ".pyo")):
                path = Path(folder, name)
                out[f"{arcroot}/{path.relative_to(root).as_posix()}"] = path
    return out


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


@lru_cache(maxsize=1)
def package_archive() -> Archive:
    """This package's sources, with the source digest the bootstrap compares an image's copy to."""
    root = Path(importlib.util.find_spec(PACKAGE).submodule_search_locations[0])  # type: ignore[union-attr]
    return Archive(
        name=PACKAGE,
        data=zip_files(tree_files(root, PACKAGE)),
        meta=(("version", _version("prefect-dockerparallel")), ("tree", tree_digest(str(root)))),
    )


def _requirement_names(dist: str) -> list[str]:
    try:
        reqs = importlib.metadata.requires(dist) or []
    except importlib.metadata.PackageNotFoundError:
        return []
    names = []
    for req in reqs:
        if "extra ==" in req:
            continue  # an optional extra: a stock image does not have it
        match = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
        if match:
            names.append(re.sub(r"[-_.]+", "-", match.group(1)).lower())
    return names


@lru_cache(maxsize=1)
def prefect_closure() -> frozenset[str]:
    """Every distribution a `pip install prefect` brings (what the official image holds)."""
    seen: set[str] = set()
    todo = ["prefect"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(_requirement_names(name))
    return frozenset(seen)


def missing_from_prefect(deps: dict[str, str] = CONTAINER_DEPS) -> dict[str, str]:
    """The container-side dependencies that Prefect's own requirements do not bring in."""
    closure = prefect_closure()
    return {dist: module for dist, module in deps.items() if dist not in closure}


def dependency_archive(dist: str, module: str) -> Archive | None:
    """A zip of an installed pure-Python dependency; None for one with compiled parts."""
    spec = importlib.util.find_spec(module)
    if spec is None:
        return None
    if spec.submodule_search_locations:
        files = tree_files(Path(list(spec.submodule_search_locations)[0]), module)
    else:
        files = {f"{module}.py": Path(spec.origin or "")}
    if any(name.endswith((".so", ".pyd", ".dylib")) for name in files):
        return None
    return Archive(name=dist, data=zip_files(files), meta=(("module", module), ("version", _version(dist))))


@lru_cache(maxsize=1)
def dependency_archives() -> tuple[Archive, ...]:
    found = (dependency_archive(d, m) for d, m in missing_from_prefect().items())
    return tuple(a for a in found if a is not None)
