"""An exception that cannot be pickled keeps its identity (issue 13, item 3).

A task raising an exception that carries an unpicklable attribute (a lock, a client) ends Failed
with the same state message, exception type name, message and traceback text as with
ThreadPoolTaskRunner; on ours the attribute itself is left out (it cannot cross processes).
"""

from __future__ import annotations

import threading
import traceback

import pytest
from prefect import flow, task

from prefect_dockerparallel.container.engine import RemoteTaskError, portable_exception
from semantics import is_ours, make_runner  # noqa: F401  (fixture)


class LockedError(ValueError):
    def __init__(self, message: str):
        super().__init__(message)
        self.lock = threading.Lock()
        self.code = 7


@task
def raises_locked() -> None:
    raise LockedError("locked-bad")


def test_exception_with_an_unpicklable_attribute_keeps_type_message_and_traceback(make_runner):
    runner = make_runner()

    @flow(task_runner=runner)
    def f():
        future = raises_locked.submit()
        future.wait()
        try:
            future.result()
        except Exception as exc:  # noqa: BLE001
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            return future.state.is_failed(), future.state.message, exc, text
        return future.state.is_failed(), future.state.message, None, ""

    failed, message, exc, text = f()
    assert failed
    assert "LockedError: locked-bad" in message
    assert type(exc).__name__ == "LockedError" and isinstance(exc, ValueError)
    assert str(exc) == "locked-bad" and exc.code == 7
    assert "in raises_locked" in text and "LockedError: locked-bad" in text  # where it was raised
    if is_ours(runner):
        assert "lock could not be pickled" in text


def _refuse_to_rebuild(message: str) -> BaseException:
    raise TypeError(f"NoRebuild cannot be rebuilt from {message!r}")


class NoRebuild(Exception):
    """Pickles, but cannot be unpickled (as pydantic's errors): its reduction's callable refuses.

    A keyword-only constructor alone is not enough once any test has imported `distributed`
    (prefect-dask): its tblib `pickling_support.install()` re-registers every exception class in
    copyreg and rebuilds such "busted" ones with `cls.__new__`, for the rest of the process."""

    def __init__(self, *, reason: str):
        super().__init__(reason)
        self.lock = threading.Lock()

    def __reduce__(self):  # what pickle, cloudpickle and tblib's reducer all call
        return (_refuse_to_rebuild, (str(self),))


def test_an_exception_that_cannot_be_rebuilt_becomes_a_remote_task_error_with_its_text():
    try:
        raise NoRebuild(reason="no-rebuild")
    except NoRebuild as exc:
        portable = portable_exception(exc)
    assert isinstance(portable, RemoteTaskError)
    assert portable.type_name.endswith("NoRebuild") and portable.message == "no-rebuild"
    assert "test_an_exception_that_cannot_be_rebuilt" in portable.traceback_text
    with pytest.raises(RemoteTaskError, match="NoRebuild: no-rebuild"):
        raise portable
