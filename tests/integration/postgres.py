"""Running PostgreSQL's programs as the postgres user, for the tests that start a real
PostgreSQL 15 on this machine (basebackup, WAL agent, SQL)."""

from __future__ import annotations

import subprocess


def as_postgres(
    *cmd: object, timeout: float = 300, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    """`cmd` as postgres (no extra groups), text output captured."""
    return subprocess.run(
        [str(c) for c in cmd],
        user="postgres",
        group="postgres",
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )
