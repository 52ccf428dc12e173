"""The failover drill's write probe (templates/drill/write-probe.php) against a real
PostgreSQL 15 on this machine: it writes every interval, records each attempt; when the
server goes away mid-run its attempts fail within the deadline instead of hanging, and
it writes again once the server is back; every write it calls acknowledged is in the
table. And the drill's arithmetic on such a record: the write gap and the chart."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks import failover
from tasks.render import TEMPLATES
from tests.integration.postgres import BIN, as_postgres, running_postgres

pytestmark = pytest.mark.integration
PROBE = TEMPLATES / "drill" / "write-probe.php"
PASSWORD = "it's a 'secret' \\ with quotes"


@pytest.fixture()
def server() -> Iterator[tuple[Path, int]]:
    """Role wp (a password with quotes and a backslash), its database, the probe's table."""
    with running_postgres("lifeboat-probe-") as (base, port):
        psql = [BIN / "psql", "-XAtq", "-h", base, "-p", str(port), "-U", "postgres", "-c"]
        quoted = PASSWORD.replace("'", "''")
        as_postgres(*psql, f"CREATE ROLE wp LOGIN PASSWORD '{quoted}'", check=True)
        as_postgres(*psql, "CREATE DATABASE site OWNER wp", check=True)
        as_postgres(
            *psql[:-1],
            "-d",
            "site",
            "-c",
            f"CREATE TABLE {failover.TABLE} (key text PRIMARY KEY, run text NOT NULL,"
            f" at timestamptz NOT NULL); ALTER TABLE {failover.TABLE} OWNER TO wp",
            check=True,
        )
        yield base, port


def test_the_probe_records_every_attempt_and_rides_out_a_restart(server, tmp_path: Path):
    base, port = server
    config = tmp_path / "db.php"
    escaped = PASSWORD.replace("\\", "\\\\").replace("'", "\\'")
    config.write_text(
        f"<?php return ['host' => '127.0.0.1', 'port' => {port}, 'dbname' => 'site', "
        f"'user' => 'wp', 'password' => '{escaped}'];\n"
    )
    out, stop = tmp_path / "record.jsonl", tmp_path / "stop"
    probe = subprocess.Popen(
        ["php", str(PROBE), "run1", str(out), str(stop), "0.05", "0.5", "60", str(config)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)
        as_postgres(BIN / "pg_ctl", "-D", base / "data", "-m", "immediate", "stop", check=True)
        down_at = time.time()
        time.sleep(1.5)
        as_postgres(
            BIN / "pg_ctl", "-D", base / "data", "-l", base / "pg.log", "-w", "start", check=True
        )
        time.sleep(1.5)
    finally:
        stop.touch()
        assert probe.wait(timeout=30) == 0, probe.stderr.read() if probe.stderr else ""
    record = [json.loads(line) for line in out.read_text().splitlines()]
    ok = [r for r in record if r["ok"]]
    assert len(ok) >= 20 and any(not r["ok"] for r in record)
    assert all(r["done"] - r["sent"] < 1.5 for r in record)  # never hangs past the deadline
    gap = failover.write_gap(record, down_at)
    assert gap.seconds is not None and 1.0 < gap.seconds < 10
    stored = as_postgres(
        BIN / "psql",
        "-XAtq",
        "-h",
        base,
        "-p",
        str(port),
        "-U",
        "postgres",
        "-d",
        "site",
        "-c",
        f"SELECT key FROM {failover.TABLE} WHERE run = 'run1'",
        check=True,
    ).stdout.split()
    assert {r["key"] for r in ok} <= set(stored)  # every acknowledged write is there
    chart = failover.timeline_chart(record, down_at)
    assert "#" in chart and "x" in chart and "|" in chart


@pytest.mark.parametrize(
    ("fault", "allowed", "message"),
    [("power-off", False, "--allow-destructive"), ("unplug", True, "unknown fault")],
)
def test_faults_need_a_name_and_consent(fault: str, allowed: bool, message: str):
    with pytest.raises(failover.DrillRefused, match=message):
        failover.check_fault(fault, allowed)
    failover.check_fault("switchover", False)
