"""Shared fixtures and ordering. The Prefect server is opt-in: only tests that request
`prefect_server` pay for starting it (~10-20 s, once per session). Tests that take the
whole lab down and up run last."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

# Modules that share the session's example stacks run after the other e2e modules (whose
# own stacks come and go: the lab's droplet limit is 25), in this order; the secret scan
# searches what all of them left; the lab's own lifecycle test goes last.
STACK_MODULES = ("test_up", "test_wordpress", "test_backup", "test_secrets")


def _order(item: pytest.Item) -> tuple[int, int]:
    if item.get_closest_marker("lab_lifecycle") is not None:
        return (2, 0)
    module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
    if module in STACK_MODULES:
        return (1, STACK_MODULES.index(module))
    return (0, 0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=_order)  # stable: the file order within each group is kept


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A real, throwaway Prefect server (SQLite in a temp dir) for block round trips."""
    from prefect.settings import (
        PREFECT_HOME,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    with pytest.MonkeyPatch.context() as mp:
        # No network here; and a private PREFECT_HOME so concurrent test processes never
        # migrate the same database at once (FIELD-NOTES).
        home = tmp_path_factory.mktemp("prefect-home")
        mp.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        mp.setenv("PREFECT_HOME", str(home))
        updates = {PREFECT_SERVER_ANALYTICS_ENABLED: False, PREFECT_HOME: str(home)}
        # A loaded 2-core machine can take longer than the default 30 s to start it.
        with temporary_settings(updates=updates), prefect_test_harness(server_startup_timeout=180):
            yield
