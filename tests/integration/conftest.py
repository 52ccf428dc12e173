"""Integration tests: each starts a real server on this machine, outside the lab (moto,
PostgreSQL, etcd, nginx, HAProxy, a Prefect server, the WAL agent under Debian's python3),
or checks rendered files with the real tool (`haproxy -c`, `nginx -t`, `php -l`,
`systemd-analyze verify`, `patroni --validate-config`). They need the packages `make deps`
installs and, for some, root. Every test here is marked `integration`."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: the marker must be there by then
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.integration)
