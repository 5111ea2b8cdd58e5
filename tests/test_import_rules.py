"""The import rules of DESIGN.md section 2, checked by importing each module in a fresh interpreter.

- protocol knows no Prefect and no provider;
- provider drivers know no Prefect and no blocks, and each cloud SDK stays in its own provider;
- container code (worker, server) imports no cloud SDK, and starts without Prefect;
- importing the collection (what every Prefect process does) imports no cloud SDK.

A module's rule is the union of the rules of the folders it lives in (see RULES).
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import pytest

import prefect_dockerparallel

CLOUD_SDKS = ("boto3", "botocore", "kubernetes", "docker")
OURS = "prefect_dockerparallel."

# module prefix -> modules that must NOT be in sys.modules after importing it
RULES: dict[str, tuple[str, ...]] = {
    "prefect_dockerparallel": CLOUD_SDKS,  # the package itself only: what Prefect imports
    "prefect_dockerparallel.specs": ("prefect", "redis", "cloudpickle"),
    "prefect_dockerparallel.protocol": (
        "prefect",
        OURS + "providers",
        OURS + "blocks",
        OURS + "runner",
        OURS + "container",
    ),
    "prefect_dockerparallel.providers": ("prefect", OURS + "blocks", OURS + "runner", OURS + "task_runner"),
    "prefect_dockerparallel.providers.base": CLOUD_SDKS,
    "prefect_dockerparallel.providers.local": CLOUD_SDKS,
    "prefect_dockerparallel.providers.readiness": CLOUD_SDKS,
    "prefect_dockerparallel.providers.tls": CLOUD_SDKS,
    "prefect_dockerparallel.providers.ecs": ("kubernetes", "docker"),
    "prefect_dockerparallel.providers.docker": ("boto3", "botocore", "kubernetes"),
    "prefect_dockerparallel.providers.docker.objects": CLOUD_SDKS,
    "prefect_dockerparallel.providers.kubernetes": ("boto3", "botocore", "docker"),
    "prefect_dockerparallel.container": (*CLOUD_SDKS, OURS + "blocks", OURS + "runner", OURS + "providers"),
    "prefect_dockerparallel.container.worker": ("prefect",),
    "prefect_dockerparallel.container.server": ("prefect",),
    "prefect_dockerparallel.container.bootstrap": ("prefect", "redis", "cloudpickle", OURS + "protocol"),
    "prefect_dockerparallel.shipping": (*CLOUD_SDKS, "prefect", OURS + "blocks", OURS + "runner", OURS + "providers"),
    "prefect_dockerparallel.blocks": CLOUD_SDKS,
    "prefect_dockerparallel.runner": CLOUD_SDKS,
    "prefect_dockerparallel.task_runner": CLOUD_SDKS,
    "prefect_dockerparallel.cluster": CLOUD_SDKS,
    "prefect_dockerparallel.executor": CLOUD_SDKS,
    "prefect_dockerparallel.adaptive": (*CLOUD_SDKS, "prefect", "redis"),  # a pure policy
    "prefect_dockerparallel.warm": CLOUD_SDKS,
    "prefect_dockerparallel.driver_beat": CLOUD_SDKS,
    "prefect_dockerparallel.settings": CLOUD_SDKS,
    "prefect_dockerparallel.cli": (*CLOUD_SDKS, "prefect"),
}


def all_modules() -> list[str]:
    names = ["prefect_dockerparallel"]
    for info in pkgutil.walk_packages(prefect_dockerparallel.__path__, OURS):
        names.append(info.name)
    return sorted(names)


def forbidden_for(module: str) -> set[str]:
    out: set[str] = set()
    for prefix, banned in RULES.items():
        applies = module == prefix or (prefix != "prefect_dockerparallel" and module.startswith(prefix + "."))
        if applies:
            out.update(banned)
    return out


_PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(sys.modules)))
"""


def _imported_by(module: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", _PROBE, module], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise AssertionError(f"importing {module} failed:\n{out.stderr[-2000:]}")
    return set(json.loads(out.stdout))


@lru_cache(maxsize=1)
def imports_of_every_module() -> dict[str, set[str]]:
    modules = all_modules()
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(modules, pool.map(_imported_by, modules)))


def test_every_module_has_a_rule() -> None:
    """A new folder must say what it may import (the rules are the architecture)."""
    uncovered = [
        m
        for m in all_modules()
        if not any(m == p or m.startswith(p + ".") for p in RULES if p != "prefect_dockerparallel")
        and m != "prefect_dockerparallel"
    ]
    assert not uncovered, f"modules without a rule of their own folder: {uncovered}"


@pytest.mark.parametrize("module", all_modules())
def test_module_respects_the_import_rules(module: str) -> None:
    loaded = imports_of_every_module()[module]
    banned = forbidden_for(module)
    broken = sorted(
        name for name in loaded if any(name == b or name.startswith(b + ".") for b in banned)
    )
    assert not broken, f"importing {module} imports forbidden modules: {broken[:10]}"
