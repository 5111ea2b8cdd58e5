"""Prefect's annotations arrive in the task exactly as with ThreadPoolTaskRunner (issue 13, item 1).

They are tuple subclasses that a plain pickle round trip double-wraps (`allow_failure(x)` came back
as `allow_failure((x,))`, so the task received `(x,)`).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.utilities.annotations import allow_failure, opaque, quote, unmapped

from semantics import make_runner  # noqa: F401  (fixture)


@task
def upstream_bad() -> None:
    raise ValueError("upstream-bad")


@task
def upstream_ok() -> list[int]:
    return [1, 2, 3]


@task
def identity(value: Any) -> Any:
    return value


@task
def pair(item: int, shared: Any) -> tuple[int, Any]:
    return item, shared


def describe(value: Any) -> Any:
    """Exceptions compared by type and text (they are not equal across a pickle round trip)."""
    if isinstance(value, BaseException):
        return ("exception", type(value).__name__, str(value))
    return value


def test_allow_failure_passes_the_upstream_exception(make_runner):
    @flow(task_runner=make_runner())
    def f():
        bad = upstream_bad.submit()
        return describe(identity.submit(allow_failure(bad)).result())

    assert f() == ("exception", "ValueError", "upstream-bad")


def test_quote_passes_the_value_untouched(make_runner):
    @flow(task_runner=make_runner())
    def f():
        return identity.submit(quote([1, 2, 3])).result(), identity.submit([quote([4, 5])]).result()

    assert f() == ([1, 2, 3], [[4, 5]])  # the engine unquotes nested quotes too


@task
def returns_annotations() -> Any:
    return [unmapped([1]), allow_failure({"a": 2})]


def test_annotations_in_a_return_value_come_back_as_returned(make_runner):
    @flow(task_runner=make_runner())
    def f():
        return returns_annotations.submit().result()

    assert f() == [unmapped([1]), allow_failure({"a": 2})]


def test_opaque_future_resolves_to_its_value(make_runner):
    @flow(task_runner=make_runner())
    def f():
        return identity.submit(opaque(upstream_ok.submit())).result()

    assert f() == [1, 2, 3]


def test_unmapped_and_nested_annotations_in_map(make_runner):
    @flow(task_runner=make_runner())
    def f():
        bad = upstream_bad.submit()
        plain = pair.map([1, 2], unmapped([9, 9])).result()
        nested = pair.map([1, 2], allow_failure(unmapped(bad))).result()
        quoted = pair.map([1, 2], unmapped(quote((7, 8)))).result()
        return plain, [(i, describe(v)) for i, v in nested], quoted

    plain, nested, quoted = f()
    assert plain == [(1, [9, 9]), (2, [9, 9])]
    assert nested == [(1, ("exception", "ValueError", "upstream-bad"))] + [(2, ("exception", "ValueError", "upstream-bad"))]
    assert quoted == [(1, (7, 8)), (2, (7, 8))]
