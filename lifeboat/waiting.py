"""The one way Lifeboat waits for a condition: poll a check until it holds or a bound
passes, then fail saying what was awaited and what the last look saw.

A check returns a truthy value when the condition holds (that value is returned), or
something falsy when it does not yet. To say *why* not, it raises `NotYet("reason")`:
the last reason ends up in the timeout's message, so a failed wait reads
"timed out after 60 s waiting for replicas caught up (last: db-2 lags 12 MB)".
Exceptions listed in `retry_on` (e.g. a connection refused while a server restarts) count
as "not yet" too, with their text as the reason; any other exception propagates at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class NotYet(Exception):
    """Raised by a check: the condition does not hold yet, and this is why."""


class WaitTimeout(TimeoutError):
    """The condition did not hold within the bound."""

    def __init__(self, what: str, timeout: float, last: str | None) -> None:
        self.what, self.timeout, self.last = what, timeout, last
        detail = f" (last: {last})" if last else ""
        super().__init__(f"timed out after {timeout:.0f} s waiting for {what}{detail}")


def wait_until(
    what: str,
    check: Callable[[], T],
    timeout: float,
    every: float = 1.0,
    retry_on: tuple[type[BaseException], ...] = (),
) -> T:
    """Call `check()` every `every` seconds until it returns something truthy (returned),
    for at most `timeout` seconds; then raise `WaitTimeout` naming `what`. The check
    always runs at least once, and once more after the deadline has passed, so a slow
    check cannot make the wait give up without a last look."""
    deadline = time.monotonic() + timeout
    last: str | None = None
    while True:
        expired = time.monotonic() >= deadline
        try:
            result = check()
        except NotYet as e:
            last, result = str(e) or None, None
        except retry_on as e:  # type: ignore[misc]  # an empty tuple catches nothing
            last, result = f"{type(e).__name__}: {e}", None
        if result:
            return result
        if expired:
            raise WaitTimeout(what, timeout, last)
        time.sleep(max(0.0, min(every, deadline - time.monotonic())))
