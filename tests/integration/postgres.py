"""Running PostgreSQL's programs as the postgres user, for the tests that start a real
PostgreSQL 15 on this machine (basebackup, WAL agent, SQL)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BIN = Path("/usr/lib/postgresql/15/bin")


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_postgres(prefix: str) -> Iterator[tuple[Path, int]]:
    """A throwaway PostgreSQL 15: trust on its unix socket (in the yielded directory), a
    password (scram) over TCP on 127.0.0.1 at the yielded port. Stopped and deleted after."""
    if not (BIN / "initdb").exists():
        raise RuntimeError("PostgreSQL is not installed: apt-get install -y postgresql-15")
    base = Path(tempfile.mkdtemp(prefix=prefix))
    shutil.chown(base, "postgres", "postgres")
    data, port = base / "data", free_port()
    as_postgres(BIN / "initdb", "-D", data, "-A", "trust", "-U", "postgres", check=True)
    with (data / "postgresql.conf").open("a") as f:
        f.write(f"listen_addresses = '127.0.0.1'\nunix_socket_directories = '{base}'\n")
        f.write(f"port = {port}\n")
    (data / "pg_hba.conf").write_text(
        "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
    )
    as_postgres(BIN / "pg_ctl", "-D", data, "-l", base / "pg.log", "-w", "start", check=True)
    try:
        yield base, port
    finally:
        as_postgres(BIN / "pg_ctl", "-D", data, "-m", "immediate", "stop", timeout=60)
        shutil.rmtree(base, ignore_errors=True)
