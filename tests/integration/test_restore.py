"""tasks/restore.py's whole restore, run on this machine instead of a droplet: a real
PostgreSQL 15 archiving through the WAL agent to a real S3 server (moto), a base backup
taken by basebackup.py, then `restore.restore()` itself (its shell commands run locally
through invoke instead of SSH) into a scratch server that replays the archive with the
rendered `wal-restore --strict`. Never a silent partial restore: an archive that just
ends restores; a WAL object changed in place or S3 going away during replay fails the
restore naming the object. Needs postgresql-15, python3-boto3, python3-zstandard, curl."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import invoke
import pytest

import tasks.backup
from tasks import restore
from tasks.render import TEMPLATES
from tests.integration import test_wal_agent as wal_tests
from tests.integration.postgres import as_postgres
from tests.integration.test_wal_agent import (
    BUCKET,
    PREFIX,
    PYTHON,
    Moto,
    free_port,
    render_script,
    wait_for,
    write_config,
)

moto = wal_tests.moto
debian_python = wal_tests.debian_python

BIN = Path("/usr/lib/postgresql/15/bin")
STRICT = "--strict"


class Local(invoke.Context):
    """What tasks.hosts.run needs of a fabric Connection, on this machine."""

    host = "localhost"


@dataclass
class Source:
    base: Path
    port: int
    system_id: str
    key: str  # the base backup's object
    sha256: str
    after_backup: list[str]  # WAL segments archived after the backup started, in order
    marker: str

    def sql(self, query: str) -> str:
        res = as_postgres(BIN / "psql", "-XAtq", "-h", self.base, "-p", self.port, "-c", query)
        assert res.returncode == 0, res.stderr
        return res.stdout.strip()

    def wal_key(self, name: str) -> str:
        return f"{PREFIX}/{self.system_id}/wal/{name}.zst"

    def restore_command(self, mode: str = STRICT) -> str:
        return f"{self.base / 'wal-restore'} {mode} %f %p".replace("  ", " ")


@pytest.fixture(scope="module")
def source(moto: Moto) -> Iterator[Source]:
    """A cluster that archives through the agent (short S3 timeouts, so an outage shows
    within seconds), a base backup of it, then five more segments archived after it, the
    last holding a marker row."""
    if not (BIN / "initdb").exists():
        pytest.fail("PostgreSQL is not installed: apt-get install -y postgresql-15")
    base = Path(tempfile.mkdtemp(prefix="lifeboat-restore-"))
    data, port, sock = base / "data", free_port(), base / "wal.sock"
    for name in ("basebackup.py", "wal_agent.py", "spaces_layout.py", "spaces_client.py"):
        shutil.copy(TEMPLATES / "wal" / name, base / name)
    write_config(
        base / "wal.conf", moto.endpoint, sock, connect_timeout=1, read_timeout=2, max_attempts=2
    )
    archive_sh = render_script("wal/archive.sh.j2", base / "wal-archive", sock)
    render_script("wal/restore.sh.j2", base / "wal-restore", sock)
    (base / "scratch").mkdir()
    for path in (base, base / "wal.conf", base / "scratch"):
        shutil.chown(path, "postgres", "postgres")
    with (base / "agent.log").open("wb") as log:
        agent = subprocess.Popen(
            [PYTHON, str(base / "wal_agent.py"), "--config", str(base / "wal.conf")],
            stdout=log,
            stderr=log,
            user="postgres",
            group="postgres",
            extra_groups=[],
        )
    try:
        wait_for(sock.exists, "agent not listening")
        as_postgres(BIN / "initdb", "-D", data, "-A", "trust", "-U", "postgres", check=True)
        with (data / "postgresql.conf").open("a") as f:
            f.write(
                f"listen_addresses = ''\nunix_socket_directories = '{base}'\nport = {port}\n"
                f"archive_mode = on\narchive_command = '{archive_sh} %p %f'\n"
            )
        as_postgres(BIN / "pg_ctl", "-D", data, "-l", base / "pg.log", "-w", "start", check=True)
        src = Source(base, port, "", "", "", [], "")
        src.system_id = src.sql("SELECT system_identifier FROM pg_control_system()")
        src.sql("CREATE TABLE t AS SELECT g, md5(g::text) AS h FROM generate_series(1, 100000) g")
        taken = as_postgres(
            PYTHON, base / "basebackup.py", "--config", base / "wal.conf",
            "take", "--id", "20261126T000000Z", "--host", base, "--port", port,
        )  # fmt: skip
        assert taken.returncode == 0, taken.stderr
        (obj,) = json.loads(taken.stdout)["objects"]
        src.key, src.sha256 = obj["key"], obj["sha256"]
        src.sql("CREATE TABLE marker (k text)")
        for i in range(5):
            src.sql(f"INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, {20000 + i}) g")
            if i == 4:
                src.marker = f"marker-{src.system_id}"
                src.sql(f"INSERT INTO marker VALUES ('{src.marker}')")
            src.after_backup.append(src.sql("SELECT pg_walfile_name(pg_current_wal_lsn())"))
            src.sql("SELECT pg_switch_wal()")
        last = src.after_backup[-1]
        wait_for(
            lambda: src.sql("SELECT last_archived_wal FROM pg_stat_archiver") == last,
            f"PostgreSQL did not archive {last} (see {base}/pg.log)",
        )
        yield src
    finally:
        if (data / "postmaster.pid").exists():
            as_postgres(BIN / "pg_ctl", "-D", data, "-m", "immediate", "stop")
        agent.terminate()
        agent.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def scratch(source: Source, monkeypatch: pytest.MonkeyPatch) -> Iterator[restore.Scratch]:
    """A scratch server's place under the source's directory; basebackup.py and the
    config are the test's copies (on a droplet: /usr/local/lib/lifeboat, /etc/lifeboat)."""
    program = f"{source.base / 'basebackup.py'} --config {source.base / 'wal.conf'}"
    monkeypatch.setattr(tasks.backup, "PROGRAM", program)
    s = restore.Scratch("t", free_port(), root=str(source.base / "scratch"))
    yield s
    restore.cleanup(Local(), s)


@dataclass
class ChangedInPlace:
    key: str
    original: bytes


@pytest.fixture
def changed_in_place(source: Source, moto: Moto) -> Iterator[ChangedInPlace]:
    """The middle segment archived after the backup, changed in place (same size, other
    bytes, metadata kept); put back afterwards."""
    name = source.after_backup[len(source.after_backup) // 2]
    key = source.wal_key(name)
    obj = moto.client.get_object(Bucket=BUCKET, Key=key)
    body, meta = obj["Body"].read(), obj["Metadata"]
    at = len(body) // 2
    forged = body[:at] + bytes(b ^ 0xFF for b in body[at : at + 8]) + body[at + 8 :]
    assert len(forged) == len(body) and forged != body
    moto.client.put_object(Bucket=BUCKET, Key=key, Body=forged, Metadata=meta)
    try:
        yield ChangedInPlace(key, body)
    finally:
        moto.client.put_object(Bucket=BUCKET, Key=key, Body=body, Metadata=meta)


def test_a_restore_replays_to_the_end_of_the_archive(
    source: Source, scratch: restore.Scratch
) -> None:
    conn = Local()
    timings = restore.restore(
        conn, scratch, source.key, source.sha256, timeout=300,
        restore_command=source.restore_command(),
    )  # fmt: skip
    assert timings.replay is not None
    assert timings.replay.expected == source.after_backup[-1]
    assert timings.replay.segment == source.after_backup[-1]
    found = as_postgres(
        BIN / "psql", "-XAtq", "-h", scratch.socket_dir, "-p", scratch.port,
        "-c", "SELECT k FROM marker",
    )  # fmt: skip
    assert found.stdout.strip() == source.marker, found.stderr
    print(f"restore: fetch {timings.fetch:.2f} s, recovery {timings.recovery:.2f} s")


def test_a_wal_object_changed_in_place_fails_the_restore_naming_it(
    source: Source, scratch: restore.Scratch, changed_in_place: ChangedInPlace
) -> None:
    """PostgreSQL aborts recovery (wal-restore --strict exits 200) and its log, which
    the error carries, names the object."""
    with pytest.raises(restore.RestoreError) as e:
        restore.restore(
            Local(), scratch, source.key, source.sha256, timeout=300,
            restore_command=source.restore_command(),
        )  # fmt: skip
    message = str(e.value)
    assert "stopped" in message  # the server, not a replay that ended early
    assert f"s3://{BUCKET}/{changed_in_place.key}" in message and "corrupt object" in message
    assert "exit code 200" in message


def test_a_lenient_restore_command_ending_early_is_caught_by_the_replay_check(
    source: Source, scratch: restore.Scratch, changed_in_place: ChangedInPlace
) -> None:
    """The second guard: with the replicas' lenient wal-restore, PostgreSQL takes the
    changed object for the end of the archive and promotes; the replay check still
    fails the restore, naming the segment replay stopped at."""
    bad = source.after_backup[len(source.after_backup) // 2]
    before = source.after_backup[source.after_backup.index(bad) - 1]
    with pytest.raises(restore.RestoreError) as e:
        restore.restore(
            Local(), scratch, source.key, source.sha256, timeout=300,
            restore_command=source.restore_command(mode=""),
        )  # fmt: skip
    message = str(e.value)
    assert f"replay stopped at segment {before}" in message, message
    assert f"{bad} or a later segment was not restored" in message
    assert f"holds WAL up to {source.after_backup[-1]}" in message


def test_s3_going_away_during_replay_fails_the_restore(
    source: Source, scratch: restore.Scratch, moto: Moto
) -> None:
    """Replay is held at the third segment after the backup (a gate in front of
    wal-restore, on a FIFO), S3 stops answering, replay goes on: the restore fails
    naming the object instead of promoting at that point."""
    held = source.after_backup[2]
    fifo = source.base / "gate.fifo"
    os.mkfifo(fifo, 0o600)
    shutil.chown(fifo, "postgres", "postgres")
    gate = source.base / "gate"
    gate.write_text(
        "#!/bin/bash\n"
        f'if [ "$1" = {held} ]; then read -r _ < {fifo}; fi\n'
        f'exec {source.base / "wal-restore"} --strict "$@"\n'
    )
    gate.chmod(0o755)

    def writer() -> int | None:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            if e.errno != errno.ENXIO:  # no reader yet
                raise
            return None

    opened: list[int] = []
    done = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(
            restore.restore, Local(), scratch, source.key, source.sha256, timeout=300,
            restore_command=f"{gate} %f %p",
        )  # fmt: skip
        try:

            def gate_reached() -> bool:
                assert not running.done(), running.exception() or "restore ended first"
                fd = writer()
                if fd is not None:
                    opened.append(fd)
                return bool(opened)

            wait_for(gate_reached, f"replay never asked for {held}", timeout=120)
            with moto.stopped():
                os.write(opened[0], b"go\n")
                os.close(opened.pop())
                error = running.exception(timeout=120)
            done.set()
        finally:
            for fd in opened:
                os.close(fd)
            if not done.is_set():
                running.cancel()
    assert isinstance(error, restore.RestoreError), error
    message = str(error)
    assert "stopped" in message
    assert f"s3://{BUCKET}/{source.wal_key(held)}" in message and "S3" in message, message
    assert "exit code 201" in message
