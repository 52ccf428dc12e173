"""Shared fixtures and ordering. The Prefect server is opt-in: only tests that request
`prefect_server` pay for starting it (~10-20 s, once per session). Tests that take the
whole lab down and up run last."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from lifeboat.server import ServerInfo

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


@pytest.fixture(scope="session", autouse=True)
def _own_lifeboat_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No test finds a developer's running Lifeboat server (~/.lifeboat): the CLI would use
    it. The session's server (below) records itself in a home of its own."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIFEBOAT_HOME", str(tmp_path_factory.mktemp("no-lifeboat-server")))
        yield


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerInfo]:
    """The session's Prefect server: a Lifeboat server (`lifeboat server start`, the one
    the demo and operators run) on a throwaway PostgreSQL, in its own LIFEBOAT_HOME, for
    block round trips, runbook runs, deployments and workers alike. It listens on every
    address so the lab's droplets can post events to it through the lab gateway."""
    from prefect.context import _temporary_global_settings_context, get_settings_context
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from lab.config import GATEWAY
    from lifeboat import server
    from tests.integration.postgres import BIN, as_postgres, free_port, running_postgres

    with (
        pytest.MonkeyPatch.context() as mp,
        running_postgres("lifeboat-prefect-db-") as (
            sock,
            pg_port,
        ),
    ):
        password = secrets.token_hex(16)
        psql = [BIN / "psql", "-h", sock, "-p", pg_port, "-U", "postgres", "-v", "ON_ERROR_STOP=1"]
        as_postgres(*psql, "-c", f"ALTER ROLE postgres PASSWORD '{password}'", check=True)
        as_postgres(*psql, "-c", "CREATE DATABASE prefect", check=True)
        mp.setenv("LIFEBOAT_HOME", str(tmp_path_factory.mktemp("lifeboat-home")))
        mp.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        mp.delenv("PREFECT_API_URL", raising=False)
        url = f"postgresql+asyncpg://postgres:{password}@127.0.0.1:{pg_port}/prefect"
        info = server.start("0.0.0.0", free_port(), url)  # noqa: S104 - see the docstring
        # Where the example stacks' droplets post their events (tests/e2e example_spec).
        mp.setenv("LIFEBOAT_E2E_EVENTS_URL", f"http://{GATEWAY}:{info.port}/api")
        try:
            with (
                temporary_settings(updates={PREFECT_API_URL: info.api_url}),
                # Threads (a backup started beside a test) start with no settings context
                # of their own: they must find this server too, not start a temporary one.
                _temporary_global_settings_context(get_settings_context()),
            ):
                yield info
                # Logs and events still queued go now: after the server stops, the
                # workers would retry them for a minute at exit.
                APILogWorker.drain_all()
                EventsWorker.drain_all()
        finally:
            server.stop()
