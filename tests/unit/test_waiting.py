"""The one waiting helper: returns the check's value, bounds the wait, says why it gave up."""

from __future__ import annotations

import itertools
import time

import pytest

from lifeboat.waiting import NotYet, WaitTimeout, wait_until


def test_returns_the_first_truthy_value():
    calls = itertools.count()
    assert (
        wait_until("third call", lambda: next(calls) >= 2 and "done", timeout=5, every=0) == "done"
    )


def test_times_out_naming_what_and_the_last_reason():
    def check():
        raise NotYet("db-2 lags 12 MB")

    start = time.monotonic()
    with pytest.raises(WaitTimeout) as e:
        wait_until("replicas caught up", check, timeout=0.3, every=0.05)
    assert time.monotonic() - start < 2
    assert "replicas caught up" in str(e.value) and "db-2 lags 12 MB" in str(e.value)
    assert isinstance(e.value, TimeoutError)


def test_looks_once_more_after_the_deadline():
    seen = []

    def check():
        seen.append(time.monotonic())
        return len(seen) >= 2  # true only on the look after the deadline

    assert wait_until("a second look", check, timeout=0.05, every=10) is True
    assert len(seen) == 2


def test_retry_on_counts_as_not_yet_and_other_errors_propagate():
    attempts = itertools.count()

    def flaky():
        if next(attempts) < 2:
            raise ConnectionRefusedError("refused")
        return 1

    assert wait_until("a server", flaky, timeout=5, every=0, retry_on=(OSError,)) == 1
    with pytest.raises(ZeroDivisionError):
        wait_until("nothing", lambda: 1 / 0, timeout=5, every=0, retry_on=(OSError,))
    with pytest.raises(WaitTimeout, match="ConnectionRefusedError: refused"):
        wait_until(
            "a dead server",
            lambda: (_ for _ in ()).throw(ConnectionRefusedError("refused")),
            timeout=0.1,
            every=0.02,
            retry_on=(OSError,),
        )
