"""Side-by-side scenarios: each runs on ThreadPoolTaskRunner and on DockerParallelTaskRunner(workers=2).

A semantics test takes the `make_runner` fixture (parametrized over both runners) and asserts one
outcome for both; where ours is meant to differ (better), the test's docstring says so and the
assertion branches on `is_ours(runner)`.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
from prefect.task_runners import ThreadPoolTaskRunner

from prefect_dockerparallel import DockerParallelTaskRunner

RUNNERS: dict[str, Callable[..., Any]] = {
    "threadpool": lambda **kw: ThreadPoolTaskRunner(**({"max_workers": kw["workers"]} if "workers" in kw else {})),
    "dockerparallel": lambda **kw: DockerParallelTaskRunner(workers=kw.get("workers", 2)),
}


@pytest.fixture(params=sorted(RUNNERS))
def make_runner(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """`make_runner()` -> a fresh runner of the parametrized kind (`workers=` = slots / threads)."""
    if request.param == "dockerparallel":
        request.getfixturevalue("no_leftover_processes")
    return RUNNERS[request.param]


def is_ours(runner: Any) -> bool:
    return isinstance(runner, DockerParallelTaskRunner)
