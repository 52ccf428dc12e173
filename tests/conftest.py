"""Shared fixtures and ordering. The Prefect server is opt-in: only tests that request
`prefect_server` pay for starting it (~10-20 s, once per session). Tests that take the
whole lab down and up run last."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("lab_lifecycle") is not None)


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
        with temporary_settings(updates=updates), prefect_test_harness():
            yield
