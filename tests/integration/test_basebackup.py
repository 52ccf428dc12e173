"""basebackup.py (templates/wal/) as on a droplet: Debian's python3 as postgres, a real
PostgreSQL 15 on a unix socket, a real S3 server (moto). Needs on the host: postgresql-15,
python3-boto3, python3-zstandard."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tasks import catalog
from tasks.render import TEMPLATES
from tests.integration import test_wal_agent as wal_tests
from tests.integration.postgres import as_postgres
from tests.integration.test_wal_agent import BUCKET, PYTHON, Moto, free_port, write_config

# The WAL agent tests' S3 server and Debian-python check, shared by name.
moto = wal_tests.moto
debian_python = wal_tests.debian_python

BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass
class Server:
    base: Path
    port: int
    conf: Path

    def sql(self, query: str) -> str:
        res = as_postgres(BIN / "psql", "-XAtq", "-h", self.base, "-p", self.port, "-c", query)
        assert res.returncode == 0, res.stderr
        return res.stdout.strip()

    def program(self, *args: str) -> subprocess.CompletedProcess[str]:
        return as_postgres(PYTHON, self.base / "basebackup.py", "--config", self.conf, *args)


@pytest.fixture(scope="module")
def server(moto: Moto) -> Iterator[Server]:
    """PostgreSQL 15 with ~60 MB of data; the programs copied beside each other as on a
    droplet; the WAL agent's config (0600 postgres) pointing at moto."""
    if not (BIN / "initdb").exists():
        pytest.fail("PostgreSQL is not installed: apt-get install -y postgresql-15")
    base = Path(tempfile.mkdtemp(prefix="lifeboat-basebackup-"))
    data, port = base / "data", free_port()
    for name in ("basebackup.py", "wal_agent.py", "spaces_layout.py", "spaces_client.py"):
        shutil.copy(TEMPLATES / "wal" / name, base / name)
    write_config(base / "wal.conf", moto.endpoint, base / "unused.sock")
    shutil.chown(base, "postgres", "postgres")
    shutil.chown(base / "wal.conf", "postgres", "postgres")
    as_postgres(BIN / "initdb", "-D", data, "-A", "trust", "-U", "postgres", check=True)
    with (data / "postgresql.conf").open("a") as f:
        f.write(f"listen_addresses = ''\nunix_socket_directories = '{base}'\nport = {port}\n")
    as_postgres(BIN / "pg_ctl", "-D", data, "-l", base / "pg.log", "-w", "start", check=True)
    srv = Server(base, port, base / "wal.conf")
    try:
        srv.sql("CREATE TABLE t AS SELECT g, md5(g::text) AS h FROM generate_series(1, 800000) g")
        yield srv
    finally:
        as_postgres(BIN / "pg_ctl", "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def taken(server: Server) -> dict:
    res = server.program(
        "take", "--id", "20261126T000000Z", "--host", str(server.base), "--port", str(server.port)
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_take_streams_one_object_and_reports_what_the_manifest_needs(
    server: Server, taken: dict, moto: Moto
) -> None:
    system_id = server.sql("SELECT system_identifier FROM pg_control_system()")
    assert taken["system_identifier"] == system_id
    assert taken["pg_version_num"] >= 150000 and taken["source_in_recovery"] is False
    assert catalog.lsn(taken["stop_lsn"]) >= catalog.lsn(taken["start_lsn"]) > 0
    (obj,) = taken["objects"]
    assert obj["key"] == f"test-stack/test-pg/{system_id}/backups/20261126T000000Z/base.tar.zst"
    body = moto.client.get_object(Bucket=BUCKET, Key=obj["key"])["Body"].read()
    assert len(body) == obj["bytes"] and hashlib.sha256(body).hexdigest() == obj["sha256"]
    assert obj["raw_bytes"] > 50e6 > obj["bytes"]  # the database, compressed
    uploads = moto.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    assert uploads == []


def test_restore_extracts_a_verifiable_data_directory(server: Server, taken: dict) -> None:
    (obj,) = taken["objects"]
    target = server.base / "restored"
    res = server.program(
        "restore", "--key", obj["key"], "--sha256", obj["sha256"], "--pgdata", str(target)
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["bytes"] == obj["bytes"]
    # pg_basebackup's own manifest checks every file's checksum (-n: WAL comes later).
    verify = as_postgres(BIN / "pg_verifybackup", "-n", target)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert (target / "backup_label").exists()
    # Never into a directory that holds something.
    again = server.program(
        "restore", "--key", obj["key"], "--sha256", obj["sha256"], "--pgdata", str(target)
    )
    assert again.returncode == 1 and "not empty" in again.stderr


def extracted(server: Server, target: Path) -> list[str]:
    """Whatever a restore into target left: in it, or beside it (its work directory)."""
    inside = [str(p) for p in target.rglob("*")] if target.exists() else []
    beside = [str(p) for p in server.base.glob(f".{target.name}*")]
    return inside + beside


def test_restore_refuses_an_object_whose_checksum_differs(server: Server, taken: dict) -> None:
    """The object is intact, the manifest's checksum is not: every file extracts, and
    still none is left behind."""
    (obj,) = taken["objects"]
    target = server.base / "bad"
    res = server.program(
        "restore", "--key", obj["key"], "--sha256", "0" * 64, "--pgdata", str(target)
    )
    assert res.returncode == 1
    assert "differs from the manifest" in res.stderr and "Traceback" not in res.stderr
    assert obj["key"] in res.stderr
    assert extracted(server, target) == []


@pytest.mark.parametrize("where", [0.5, 0.999])
def test_a_backup_object_changed_in_place_leaves_nothing_extracted(
    server: Server, taken: dict, moto: Moto, where: float
) -> None:
    """Same size, other bytes (in the middle: decompression or the tar breaks; near the
    end: everything extracts before the checksum tells): the error names the object, and
    the target stays empty, as does its parent."""
    (obj,) = taken["objects"]
    body = moto.client.get_object(Bucket=BUCKET, Key=obj["key"])["Body"].read()
    at = int(len(body) * where)
    forged = body[:at] + bytes(b ^ 0x5A for b in body[at : at + 16]) + body[at + 16 :]
    assert len(forged) == len(body) and forged != body
    key = obj["key"].replace("/20261126T000000Z/", f"/changed-{at}/")
    moto.client.put_object(Bucket=BUCKET, Key=key, Body=forged)
    target = server.base / f"changed-{at}"
    target.mkdir()
    shutil.chown(target, "postgres", "postgres")
    res = server.program(
        "restore", "--key", key, "--sha256", obj["sha256"], "--pgdata", str(target)
    )
    assert res.returncode == 1, res.stdout
    line = res.stderr.strip()
    assert f"s3://{BUCKET}/{key}" in line and "differs from the manifest" in line, line
    assert "Traceback" not in line
    assert extracted(server, target) == [] and target.is_dir()


def test_a_backup_never_overwrites_an_object(server: Server, taken: dict, moto: Moto) -> None:
    """A second backup under a stored id is refused before pg_basebackup starts; one
    whose key appears while it runs is refused by S3 at completion (create only, as the
    WAL agent's writes): the stored object stays as it was."""
    (obj,) = taken["objects"]
    before = moto.client.head_object(Bucket=BUCKET, Key=obj["key"])["ETag"]
    again = server.program(
        "take", "--id", taken["id"], "--host", str(server.base), "--port", str(server.port)
    )
    assert again.returncode == 1 and "already exists: not overwriting" in again.stderr
    assert obj["key"] in again.stderr
    # The race: the check before the backup misses the object (as if written after it).
    race = (
        "import sys; sys.path.insert(0, sys.argv[1]); import basebackup as b\n"
        "b._exists = lambda *a: False\n"
        "sys.exit(b.main(sys.argv[2:]))\n"
    )
    raced = as_postgres(
        PYTHON,
        "-c",
        race,
        server.base,
        "--config",
        server.conf,
        "take",
        "--id",
        taken["id"],
        "--host",
        server.base,
        "--port",
        server.port,
    )
    assert raced.returncode == 1 and "appeared meanwhile: not overwriting" in raced.stderr
    assert moto.client.head_object(Bucket=BUCKET, Key=obj["key"])["ETag"] == before
    assert moto.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_a_failed_pg_basebackup_leaves_no_upload_behind(server: Server, moto: Moto) -> None:
    res = server.program(
        "take", "--id", "broken", "--host", str(server.base), "--port", str(free_port())
    )
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "psql failed" in res.stderr or "pg_basebackup failed" in res.stderr
    keys = [o["Key"] for o in moto.client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert not [k for k in keys if "/broken/" in k]
    assert moto.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


TAP_CHECK = """
import io, sys, tarfile, zstandard
sys.path.insert(0, sys.argv[1])
import basebackup
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
    info = tarfile.TarInfo("PG_VERSION")
    info.size = 3
    tar.addfile(info, io.BytesIO(b"15\\n"))
whole = zstandard.ZstdCompressor().compress(buf.getvalue())
for label, stream in (("cut", whole[:-5]), ("whole", whole)):
    tap = basebackup.Tap(io.BytesIO(stream), "backup_manifest")
    while tap.read(7):
        pass
    try:
        tap.finish()
    except RuntimeError as e:
        print(label, e, tap.raw_bytes)
"""


def test_a_stream_cut_inside_its_frame_or_without_a_manifest_is_refused(server: Server) -> None:
    """What is stored is decompressed as it is read: a zstd stream that ends inside its
    frame fails the backup, and so does a whole one whose tar has no backup_manifest."""
    res = subprocess.run(
        [PYTHON, "-c", TAP_CHECK, str(server.base)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    cut, whole = res.stdout.splitlines()
    assert cut.startswith("cut pg_basebackup's zstd stream ends inside its frame")
    assert whole == "whole pg_basebackup's output had no backup_manifest 10240"
