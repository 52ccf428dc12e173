"""The WAL agent and its archive/restore commands (templates/wal/), run as on a droplet:
Debian's /usr/bin/python3 with python3-boto3 and python3-zstandard, the rendered shell
scripts through curl, against a real S3 server (moto) on a free 127.0.0.1 port.

Needs on the host: apt-get install -y python3-boto3 python3-zstandard curl systemd
(shellcheck is used when installed)."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from lifeboat.waiting import wait_until
from tasks.render import TEMPLATES, render
from tests.integration.postgres import as_postgres

AGENT = TEMPLATES / "wal" / "wal_agent.py"
PYTHON = "/usr/bin/python3"
BUCKET = "lifeboat-wal-test"
PREFIX = "test-stack/test-pg"
SECRET = 's3cr3t-Wal-Key/with"quote\\and-backslash'  # must never reach a log
SEGMENT = 16 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    wait_until(what, check, timeout, every=0.05)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("lifeboat-wal", timeout=30)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def ask(sock: Path, method: str, path: str) -> tuple[int, str]:
    conn = UnixHTTPConnection(str(sock))
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def wal_like(size: int, seed: int) -> bytes:
    """Compressible like WAL: 8 KiB pages, each some random bytes and a repeated run."""
    rng = random.Random(seed)
    page = bytearray()
    out = bytearray()
    while len(out) < size:
        page[:] = rng.randbytes(600) + bytes([rng.randrange(256)]) * (8192 - 600)
        out += page
    return bytes(out[:size])


@pytest.fixture(scope="module", autouse=True)
def debian_python() -> None:
    probe = subprocess.run(
        [PYTHON, "-c", "import boto3, zstandard"], capture_output=True, text=True, timeout=30
    )
    if probe.returncode != 0:
        pytest.fail(f"apt-get install -y python3-boto3 python3-zstandard\n{probe.stderr}")
    if shutil.which("curl") is None:
        pytest.fail("curl is not installed: apt-get install -y curl")


@dataclass
class Moto:
    proc: subprocess.Popen
    endpoint: str
    client: object
    log: Path  # its request log among the rest: one line per request

    def stopped(self) -> _Paused:
        return _Paused(self.proc)


class _Paused:
    """S3 hangs (SIGSTOP): connections are accepted, nothing answers, as in an outage
    where packets vanish. Its data stays."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc

    def __enter__(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGCONT)


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    tmp = tmp_path_factory.mktemp("moto")
    port = free_port()
    env = os.environ | {"S3_IGNORE_SUBDOMAIN_BUCKETNAME": "true", "TMPDIR": str(tmp)}
    with (tmp / "moto.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    try:
        wait_for(lambda: port_open(port) or proc.poll() is not None, "moto not listening")
        assert proc.poll() is None, (tmp / "moto.log").read_text()
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="nyc3",
            aws_access_key_id="TESTKEY",
            aws_secret_access_key="testsecret",
            config=Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        client.create_bucket(
            Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "nyc3"}
        )
        yield Moto(proc, endpoint, client, tmp / "moto.log")
    finally:
        proc.send_signal(signal.SIGCONT)  # in case a test stopped it and failed
        proc.terminate()
        proc.wait(timeout=10)


@dataclass
class Agent:
    proc: subprocess.Popen
    sock: Path
    log: Path
    archive_sh: Path
    restore_sh: Path

    def vm(self, field: str) -> int:
        """A /proc/PID/status memory figure in KiB (VmRSS, VmHWM: peak RSS)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {field}")


def write_config(path: Path, endpoint: str, sock: Path, **extra: object) -> None:
    settings = {"bucket": BUCKET, "prefix": PREFIX} | extra
    text = render(
        "wal/wal.conf.j2",
        endpoint=endpoint,
        region="nyc3",
        access_key="TESTKEY",
        secret_key=SECRET,
        socket=str(sock),
        **settings,
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def render_script(template: str, path: Path, sock: Path) -> Path:
    path.write_text(render(template, socket=str(sock), timeout=60))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def start_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Agent]]:
    """Starts agents (Debian's python3) from rendered configs; stops them at the end."""
    agents: list[Agent] = []

    def start(endpoint: str, **config: object) -> Agent:
        tmp = tmp_path_factory.mktemp("agent")
        sock = tmp / "wal.sock"
        write_config(tmp / "wal.conf", endpoint, sock, **config)
        log = tmp / "agent.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [PYTHON, str(AGENT), "--config", str(tmp / "wal.conf")],
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
            )
        agent = Agent(
            proc,
            sock,
            log,
            render_script("wal/archive.sh.j2", tmp / "wal-archive", sock),
            render_script("wal/restore.sh.j2", tmp / "wal-restore", sock),
        )
        agents.append(agent)

        def ready() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return ask(sock, "GET", "/health")[0] == 200
            except OSError:
                return False

        wait_for(ready, "agent not answering")
        return agent

    yield start
    for agent in agents:
        agent.proc.terminate()
    for agent in agents:
        agent.proc.wait(timeout=30)
        text = agent.log.read_text()
        assert SECRET not in text and "testsecret" not in text
        assert "Traceback" not in text, text


@pytest.fixture(scope="module")
def agent(moto: Moto, start_agent: Callable[..., Agent]) -> Agent:
    return start_agent(moto.endpoint)


@dataclass
class PgData:
    """A data directory as the commands see it: global/pg_control (the system
    identifier in its first 8 bytes) and pg_wal/; commands run with it as cwd."""

    path: Path
    system_id: int

    @property
    def wal(self) -> Path:
        return self.path / "pg_wal"

    def key(self, name: str) -> str:
        return f"{PREFIX}/{self.system_id}/wal/{name}.zst"


@pytest.fixture
def pgdata(tmp_path: Path) -> PgData:
    system_id = random.getrandbits(63)  # each test its own namespace in the bucket
    (tmp_path / "global").mkdir()
    (tmp_path / "global" / "pg_control").write_bytes(struct.pack("=Q", system_id) + bytes(100))
    (tmp_path / "pg_wal").mkdir()
    return PgData(tmp_path, system_id)


def run(
    script: Path, first: str, second: str, cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(script), first, second], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def archive(agent: Agent, pg: PgData, name: str, data: bytes) -> subprocess.CompletedProcess:
    """As PostgreSQL calls it: archive_command '... %p %f', %p relative to the data dir."""
    (pg.wal / name).write_bytes(data)
    return run(agent.archive_sh, f"pg_wal/{name}", name, pg.path)


def restore(agent: Agent, pg: PgData, name: str, dest: str = "RECOVERYXLOG"):
    return run(agent.restore_sh, name, f"pg_wal/{dest}", pg.path)


def stored(moto: Moto, key: str) -> tuple[bytes, dict[str, str], str]:
    obj = moto.client.get_object(Bucket=BUCKET, Key=key)
    return obj["Body"].read(), obj["Metadata"], obj["ETag"]


def leftovers(pg: PgData) -> list[str]:
    return sorted(p.name for p in pg.wal.iterdir() if p.name.startswith("."))


# --- archive and restore ----------------------------------------------------------------


def test_archive_then_restore_round_trip(moto: Moto, agent: Agent, pgdata: PgData) -> None:
    name = "000000010000000000000003"
    data = wal_like(SEGMENT, 3)
    result = archive(agent, pgdata, name, data)
    assert result.returncode == 0, result.stderr
    body, meta, _ = stored(moto, pgdata.key(name))
    assert meta["sha256"] == hashlib.sha256(data).hexdigest()
    assert meta["size"] == str(SEGMENT)
    assert body[:4] == b"\x28\xb5\x2f\xfd"  # a zstd frame
    assert len(body) < SEGMENT // 4

    result = restore(agent, pgdata, name)
    assert result.returncode == 0, result.stderr
    assert (pgdata.wal / "RECOVERYXLOG").read_bytes() == data
    assert leftovers(pgdata) == []


def test_history_and_backup_files_round_trip(agent: Agent, pgdata: PgData) -> None:
    files = {
        "00000002.history": b"1\t0/5000000\tno recovery target specified\n",
        "000000010000000000000004.00000028.backup": b"START WAL LOCATION: 0/4000028\n",
        "000000010000000000000005.partial": wal_like(SEGMENT, 5),
    }
    for name, data in files.items():
        assert archive(agent, pgdata, name, data).returncode == 0
    for name, data in files.items():
        result = restore(agent, pgdata, name, dest="RECOVERYHISTORY")
        assert result.returncode == 0, result.stderr
        assert (pgdata.wal / "RECOVERYHISTORY").read_bytes() == data


def test_archiving_the_same_segment_twice_succeeds(moto: Moto, agent: Agent, pgdata: PgData):
    name = "000000010000000000000007"
    data = wal_like(SEGMENT, 7)
    assert archive(agent, pgdata, name, data).returncode == 0
    etag = stored(moto, pgdata.key(name))[2]
    result = archive(agent, pgdata, name, data)
    assert result.returncode == 0, result.stderr
    assert stored(moto, pgdata.key(name))[2] == etag


def test_different_contents_under_an_archived_name_fail(
    moto: Moto, agent: Agent, pgdata: PgData
) -> None:
    name = "000000010000000000000008"
    data = wal_like(SEGMENT, 8)
    assert archive(agent, pgdata, name, data).returncode == 0
    before = stored(moto, pgdata.key(name))

    other = data[:-1] + b"\x01"  # same size: only the checksum tells them apart
    result = archive(agent, pgdata, name, other)
    assert result.returncode == 1
    assert "different contents" in result.stderr and "not overwriting" in result.stderr
    assert stored(moto, pgdata.key(name)) == before
    assert "different contents" in agent.log.read_text()  # the agent logs why


def test_a_replaced_timelines_segment_in_two_versions_keeps_the_first_and_moves_on(
    moto: Moto, agent: Agent, pgdata: PgData
) -> None:
    """Timeline 2 replaced timeline 1 (its history file is archived): an old primary's
    other version of a timeline 1 segment is stored beside the first, which is kept, and
    the archiver is told to move on. Without the newer timeline it is refused (above)."""
    name = "000000010000000000000009"
    first = wal_like(SEGMENT, 9)
    assert archive(agent, pgdata, name, first).returncode == 0
    before = stored(moto, pgdata.key(name))
    assert archive(agent, pgdata, "00000002.history", b"1\t0/9000000\tno target\n").returncode == 0

    other = first[: SEGMENT // 2] + wal_like(SEGMENT // 2, 99)  # diverged past the switch
    result = archive(agent, pgdata, name, other)
    assert result.returncode == 0, result.stderr
    assert stored(moto, pgdata.key(name)) == before  # never overwritten
    aside = pgdata.key(f"{name}.diverged-{hashlib.sha256(other).hexdigest()[:16]}")
    assert stored(moto, aside)[1]["sha256"] == hashlib.sha256(other).hexdigest()
    assert "which timeline 2 replaced" in agent.log.read_text()
    assert archive(agent, pgdata, name, other).returncode == 0  # again: still moves on
    result = restore(agent, pgdata, name)
    assert result.returncode == 0 and (pgdata.wal / "RECOVERYXLOG").read_bytes() == first


def test_same_name_in_two_clusters_does_not_collide(
    moto: Moto, agent: Agent, pgdata: PgData, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A re-bootstrapped cluster (new system identifier) reuses segment names."""
    other = tmp_path_factory.mktemp("other-pgdata")
    shutil.copytree(pgdata.path, other, dirs_exist_ok=True)
    second = PgData(other, pgdata.system_id + 1)
    (other / "global" / "pg_control").write_bytes(struct.pack("=Q", second.system_id))
    name = "000000010000000000000001"
    assert archive(agent, pgdata, name, b"first cluster" * 1000).returncode == 0
    assert archive(agent, second, name, b"second cluster" * 1000).returncode == 0
    assert stored(moto, pgdata.key(name))[0] != stored(moto, second.key(name))[0]


def test_a_restored_cluster_reads_the_source_archive_and_writes_only_its_own(
    moto: Moto, agent: Agent, pgdata: PgData, start_agent: Callable[..., Agent]
) -> None:
    """`recover restore-cluster`: the new stack's agent reads what its own archive lacks
    from the source's (another bucket, same system identifier) and never writes there."""
    moto.client.create_bucket(
        Bucket="lifeboat-restored", CreateBucketConfiguration={"LocationConstraint": "nyc3"}
    )
    restored = start_agent(
        moto.endpoint,
        bucket="lifeboat-restored",
        prefix="restored",
        source_bucket=BUCKET,
        source_prefix=PREFIX,
    )
    old, new = "000000010000000000000004", "000000020000000000000004"
    data = wal_like(SEGMENT, 4)
    assert archive(agent, pgdata, old, data).returncode == 0
    source_keys = sorted(o["Key"] for o in moto.client.list_objects_v2(Bucket=BUCKET)["Contents"])

    result = run(restored.restore_sh, old, f"pg_wal/{old}", pgdata.path)
    assert result.returncode == 0, result.stderr
    assert (pgdata.wal / old).read_bytes() == data
    # In neither archive: "not in the archive", strict or not (the end of a recovery).
    missing = run(restored.restore_sh, "000000010000000000000005", "pg_wal/X", pgdata.path)
    assert missing.returncode == 1 and missing.stderr == ""
    strict = subprocess.run(
        [str(restored.restore_sh), "--strict", "000000010000000000000005", "pg_wal/X"],
        cwd=pgdata.path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert strict.returncode == 1, strict.stderr

    # The new timeline archives under the restored stack's own prefix only.
    assert archive(restored, pgdata, new, wal_like(SEGMENT, 5)).returncode == 0
    own = moto.client.list_objects_v2(Bucket="lifeboat-restored")["Contents"]
    assert [o["Key"] for o in own] == [f"restored/{pgdata.system_id}/wal/{new}.zst"]
    after = sorted(o["Key"] for o in moto.client.list_objects_v2(Bucket=BUCKET)["Contents"])
    assert after == source_keys
    # Its own copy wins over the source's: a restore reads it from there.
    result = run(restored.restore_sh, new, "pg_wal/RECOVERYXLOG", pgdata.path)
    assert result.returncode == 0 and (pgdata.wal / "RECOVERYXLOG").read_bytes() == wal_like(
        SEGMENT, 5
    )


def test_restore_of_a_missing_segment_exits_non_zero(agent: Agent, pgdata: PgData) -> None:
    result = restore(agent, pgdata, "0000000100000000000000FF")
    assert result.returncode == 1
    assert result.stderr == ""  # PostgreSQL asks for files that do not exist yet
    assert not (pgdata.wal / "RECOVERYXLOG").exists()
    assert leftovers(pgdata) == []


@pytest.mark.parametrize("tamper", ["other-contents", "not-zstd"])
def test_a_corrupted_object_is_refused_and_nothing_written(
    moto: Moto, agent: Agent, pgdata: PgData, tamper: str
) -> None:
    name = "00000001000000000000000A"
    data = wal_like(SEGMENT, 10)
    assert archive(agent, pgdata, name, data).returncode == 0
    _, meta, _ = stored(moto, pgdata.key(name))
    if tamper == "other-contents":  # a valid frame (Debian's zstandard), one byte differs
        forged = subprocess.run(
            [
                PYTHON,
                "-c",
                "import sys,zstandard;"
                "sys.stdout.buffer.write(zstandard.compress(sys.stdin.buffer.read()))",
            ],
            input=data[:-1] + b"\x02",
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    else:
        forged = os.urandom(4096)
    moto.client.put_object(Bucket=BUCKET, Key=pgdata.key(name), Body=forged, Metadata=meta)

    result = restore(agent, pgdata, name)
    assert result.returncode == 1
    assert ("sha256" if tamper == "other-contents" else "corrupt") in result.stderr
    assert not (pgdata.wal / "RECOVERYXLOG").exists()
    assert leftovers(pgdata) == []


def test_ready_files_are_read_ahead_and_still_checked(
    moto: Moto, agent: Agent, pgdata: PgData
) -> None:
    """While the archiver waits on one file, the agent uploads the next ready ones; each
    is answered for only once its file hashes to what was stored."""
    names = [f"0000000100000000000000{i:02X}" for i in range(0x50, 0x54)]
    contents = {name: wal_like(SEGMENT, i) for i, name in enumerate(names)}
    (pgdata.wal / "archive_status").mkdir()
    for name in names:
        (pgdata.wal / name).write_bytes(contents[name])
        (pgdata.wal / "archive_status" / f"{name}.ready").touch()
    before = json.loads(ask(agent.sock, "GET", "/health")[1])["read_ahead"]

    assert archive(agent, pgdata, names[0], contents[names[0]]).returncode == 0
    (pgdata.wal / "archive_status" / f"{names[0]}.ready").rename(
        pgdata.wal / "archive_status" / f"{names[0]}.done"
    )

    def read_ahead() -> bool:
        return json.loads(ask(agent.sock, "GET", "/health")[1])["read_ahead"] - before >= 2

    wait_for(read_ahead, "nothing read ahead")
    stored_ahead = [
        n
        for n in names[1:]
        if "Contents" in moto.client.list_objects_v2(Bucket=BUCKET, Prefix=pgdata.key(n))
    ]
    assert len(stored_ahead) >= 2
    # The file of a read-ahead segment changes before PostgreSQL asks: refused, not 200.
    changed = stored_ahead[0]
    result = archive(agent, pgdata, changed, contents[changed][::-1])
    assert result.returncode == 1 and "different contents" in result.stderr
    for name in names[1:]:
        if name != changed:
            result = run(agent.archive_sh, f"pg_wal/{name}", name, pgdata.path)  # unchanged
            assert result.returncode == 0, result.stderr
            assert (
                stored(moto, pgdata.key(name))[1]["sha256"]
                == hashlib.sha256(contents[name]).hexdigest()
            )
    assert "stored ahead, identical" in agent.log.read_text()


def test_real_postgresql_archives_and_restores_through_the_agent(moto: Moto) -> None:
    """PostgreSQL 15 itself runs the rendered archive_command (%p relative to its data
    directory, agent and server as postgres); the key carries the system identifier that
    pg_controldata reports."""
    bin_dir = Path("/usr/lib/postgresql/15/bin")
    if not (bin_dir / "initdb").exists():
        pytest.fail("PostgreSQL is not installed: apt-get install -y postgresql-15")
    base = Path(tempfile.mkdtemp(prefix="lifeboat-wal-pg-"))  # postgres can enter it
    sock, conf, data, port = base / "wal.sock", base / "wal.conf", base / "data", free_port()

    def sql(query: str) -> str:
        result = as_postgres(bin_dir / "psql", "-h", base, "-p", port, "-Atc", query, check=True)
        return result.stdout.strip()

    agent = None
    try:
        write_config(conf, moto.endpoint, sock)
        archive_sh = render_script("wal/archive.sh.j2", base / "wal-archive", sock)
        restore_sh = render_script("wal/restore.sh.j2", base / "wal-restore", sock)
        for path in (base, conf):
            shutil.chown(path, "postgres", "postgres")
        with (base / "agent.log").open("wb") as log:
            agent = subprocess.Popen(
                [PYTHON, str(AGENT), "--config", str(conf)],
                stdout=log,
                stderr=log,
                user="postgres",
                group="postgres",
                extra_groups=[],
            )
        wait_for(sock.exists, "agent not listening")
        as_postgres(bin_dir / "initdb", "-D", data, "-A", "trust", "-U", "postgres", check=True)
        with (data / "postgresql.conf").open("a") as f:
            f.write(
                f"listen_addresses = ''\nunix_socket_directories = '{base}'\nport = {port}\n"
                f"archive_mode = on\narchive_command = '{archive_sh} %p %f'\n"
            )
        as_postgres(
            bin_dir / "pg_ctl", "-D", data, "-l", base / "pg.log", "-w", "start", check=True
        )

        sql("create table t as select generate_series(1, 10000) as g")
        name = sql("select pg_walfile_name(pg_current_wal_lsn())")
        sql("select pg_switch_wal()")
        wait_for(
            lambda: sql("select last_archived_wal from pg_stat_archiver") == name,
            f"PostgreSQL did not archive {name} (see {base}/pg.log)",
        )
        assert sql("select failed_count from pg_stat_archiver") == "0"

        control = as_postgres(bin_dir / "pg_controldata", data, check=True).stdout
        system_id = re.search(r"Database system identifier:\s+(\d+)", control)[1]
        original = (data / "pg_wal" / name).read_bytes()
        meta = stored(moto, f"{PREFIX}/{system_id}/wal/{name}.zst")[1]
        assert meta["sha256"] == hashlib.sha256(original).hexdigest()

        restored = as_postgres(restore_sh, name, "pg_wal/RECOVERYXLOG", cwd=data)
        assert restored.returncode == 0, restored.stderr
        assert (data / "pg_wal" / "RECOVERYXLOG").read_bytes() == original
        assert (data / "pg_wal" / "RECOVERYXLOG").owner() == "postgres"
    finally:
        if (data / "postmaster.pid").exists():
            as_postgres(bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "stop")
        if agent is not None:
            agent.terminate()
            agent.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)


# --- S3 away ----------------------------------------------------------------------------


def test_archive_fails_fast_when_s3_refuses_connections(
    start_agent: Callable[..., Agent], pgdata: PgData
) -> None:
    closed = start_agent(f"http://127.0.0.1:{free_port()}", connect_timeout=1, max_attempts=2)
    started = time.monotonic()
    result = archive(closed, pgdata, "000000010000000000000010", wal_like(SEGMENT, 16))
    elapsed = time.monotonic() - started
    assert result.returncode == 1 and "S3" in result.stderr, result.stderr
    assert elapsed < 20, f"took {elapsed:.1f} s"
    # the agent keeps answering
    assert ask(closed.sock, "GET", "/health")[0] == 200
    status, body = ask(closed.sock, "GET", "/health?s3=1")
    assert status == 503 and json.loads(body)["failed"] >= 1


def test_archive_fails_while_s3_hangs_and_succeeds_once_it_is_back(
    moto: Moto, start_agent: Callable[..., Agent], pgdata: PgData
) -> None:
    hurried = start_agent(moto.endpoint, connect_timeout=1, read_timeout=2, max_attempts=2)
    name = "000000010000000000000011"
    data = wal_like(SEGMENT, 17)
    with moto.stopped():
        started = time.monotonic()
        result = archive(hurried, pgdata, name, data)
        elapsed = time.monotonic() - started
        assert result.returncode == 1 and "S3" in result.stderr, result.stderr
        assert elapsed < 30, f"took {elapsed:.1f} s"
        assert restore(hurried, pgdata, name).returncode == 1
    # PostgreSQL's archiver retries the same file
    result = archive(hurried, pgdata, name, data)
    assert result.returncode == 0, result.stderr
    assert stored(moto, pgdata.key(name))[1]["sha256"] == hashlib.sha256(data).hexdigest()
    assert restore(hurried, pgdata, name).returncode == 0
    assert (pgdata.wal / "RECOVERYXLOG").read_bytes() == data


def test_commands_exit_2_when_the_agent_is_down(tmp_path: Path, pgdata: PgData) -> None:
    sock = tmp_path / "nobody.sock"
    archive_sh = render_script("wal/archive.sh.j2", tmp_path / "wal-archive", sock)
    restore_sh = render_script("wal/restore.sh.j2", tmp_path / "wal-restore", sock)
    (pgdata.wal / "000000010000000000000001").write_bytes(b"x")
    result = run(
        archive_sh, "pg_wal/000000010000000000000001", "000000010000000000000001", pgdata.path
    )
    assert result.returncode == 2 and "no answer from lifeboat-wal-agent" in result.stderr
    assert run(restore_sh, "000000010000000000000001", "pg_wal/X", pgdata.path).returncode == 2


# --- strict and lenient restore_command ---------------------------------------------------


def strict(agent: Agent, pg: PgData, name: str) -> subprocess.CompletedProcess[str]:
    """restore_command as restores and recoveries run it: '... --strict %f %p'."""
    return subprocess.run(
        [str(agent.restore_sh), "--strict", name, "pg_wal/RECOVERYXLOG"],
        cwd=pg.path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _same_size_other_bytes(moto: Moto, key: str) -> None:
    """The object changed in place: same size, a few bytes in its middle flipped."""
    body, meta, _ = stored(moto, key)
    middle = len(body) // 2
    forged = body[:middle] + bytes(b ^ 0xFF for b in body[middle : middle + 8]) + body[middle + 8 :]
    assert len(forged) == len(body) and forged != body
    moto.client.put_object(Bucket=BUCKET, Key=key, Body=forged, Metadata=meta)


@pytest.mark.parametrize("trouble", ["missing", "corrupt", "s3-hangs", "s3-refuses", "no-agent"])
def test_strict_mode_stops_on_trouble_and_lenient_mode_waits(
    moto: Moto,
    agent: Agent,
    start_agent: Callable[..., Agent],
    pgdata: PgData,
    tmp_path: Path,
    trouble: str,
) -> None:
    """Only "not in the archive" is the end of the archive for a restore (exit 1,
    quietly); a corrupt object, S3 failing and a silent agent exit above 125 in strict
    mode (PostgreSQL aborts recovery) after one line naming the object. The lenient mode
    (replicas) keeps exiting 1 (2 for a silent agent) for all of them."""
    name = "000000010000000000000060"
    key = pgdata.key(name)
    who = agent
    if trouble != "missing":
        assert archive(agent, pgdata, name, wal_like(SEGMENT, 60)).returncode == 0
    if trouble == "corrupt":
        _same_size_other_bytes(moto, key)
    elif trouble == "s3-refuses":
        who = start_agent(f"http://127.0.0.1:{free_port()}", connect_timeout=1, max_attempts=2)
    elif trouble == "s3-hangs":
        who = start_agent(moto.endpoint, connect_timeout=1, read_timeout=2, max_attempts=2)
    elif trouble == "no-agent":
        sock = tmp_path / "nobody.sock"
        who = Agent(agent.proc, sock, agent.log, agent.archive_sh, agent.restore_sh)
        who.restore_sh = render_script("wal/restore.sh.j2", tmp_path / "wal-restore", sock)

    def both() -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
        if trouble != "s3-hangs":
            return restore(who, pgdata, name), strict(who, pgdata, name)
        with moto.stopped():
            return restore(who, pgdata, name), strict(who, pgdata, name)

    lenient, strict_ = both()
    expected = {"missing": 1, "corrupt": 200, "s3-hangs": 201, "s3-refuses": 201, "no-agent": 202}
    assert (lenient.returncode, strict_.returncode) == (
        2 if trouble == "no-agent" else 1,
        expected[trouble],
    ), strict_.stderr
    assert not (pgdata.wal / "RECOVERYXLOG").exists()
    assert leftovers(pgdata) == []
    if trouble == "missing":
        assert lenient.stderr == strict_.stderr == ""  # PostgreSQL asks for future files
        return
    lines = strict_.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"wal-restore {name}: "), lines
    if trouble != "no-agent":
        assert f"s3://{BUCKET}/{key}" in lines[0]
        assert ("corrupt object" if trouble == "corrupt" else "S3") in lines[0]
    assert lenient.stderr.strip() == lines[0]  # the same line, only the exit code differs


def test_strict_mode_refuses_bad_arguments_above_125(agent: Agent, pgdata: PgData) -> None:
    bad = subprocess.run(
        [str(agent.restore_sh), "--strict", "../x"], cwd=pgdata.path, capture_output=True
    )
    assert bad.returncode == 203 and b"usage" in bad.stderr
    assert run(agent.restore_sh, "../x", "pg_wal/X", pgdata.path).returncode == 3


# --- bounded memory -----------------------------------------------------------------------


def test_memory_stays_bounded(
    moto: Moto, start_agent: Callable[..., Agent], pgdata: PgData
) -> None:
    """Incompressible files go up as multipart parts and come back streamed: the peak
    RSS does not grow with the file (a whole-file approach needs 2x its size)."""
    fresh = start_agent(moto.endpoint)
    peaks = [fresh.vm("VmHWM")]
    for i, size in enumerate((SEGMENT, 4 * SEGMENT)):
        name = f"0000000100000000000000{0x20 + i:02X}"
        data = os.urandom(size)
        result = archive(fresh, pgdata, name, data)
        assert result.returncode == 0, result.stderr
        assert restore(fresh, pgdata, name).returncode == 0
        assert (pgdata.wal / "RECOVERYXLOG").read_bytes() == data
        moto.client.delete_object(Bucket=BUCKET, Key=pgdata.key(name))  # moto keeps it in RAM
        peaks.append(fresh.vm("VmHWM"))
    start, after_16, after_64 = (kib / 1024 for kib in peaks)
    print(
        f"agent peak RSS MiB: start {start:.0f}, 16 MiB file {after_16:.0f}, 64 MiB {after_64:.0f}"
    )
    assert after_16 - start < 40, "a 16 MiB segment should cost about two 8 MiB parts"
    assert after_64 - after_16 < 8, "the peak grew with the file size"


def test_a_write_that_loses_the_race_is_compared_not_overwritten(
    moto: Moto, agent: Agent, pgdata: PgData, tmp_path: Path
) -> None:
    """Another writer stores the name between the agent's HEAD and its PUT (forced by
    making HEAD miss once): the conditional write is refused by S3 and the agent compares
    checksums instead of overwriting."""
    name = "000000010000000000000040"
    data = wal_like(SEGMENT, 40)
    assert archive(agent, pgdata, name, data).returncode == 0
    before = stored(moto, pgdata.key(name))
    conf = tmp_path / "wal.conf"
    write_config(conf, moto.endpoint, tmp_path / "unused.sock")
    race = (
        "import sys; sys.path.insert(0, sys.argv[1]); import wal_agent as m\n"
        "a = m.Agent(m.load_settings(sys.argv[2])); head = a.head; misses = []\n"
        "def racing_head(key):\n"
        "    misses.append(key)\n"
        "    return None if len(misses) == 1 else head(key)\n"
        "a.head = racing_head\n"
        "try:\n"
        "    print(a.archive(sys.argv[3], sys.argv[4], None))\n"
        "except m.Failure as e:\n"
        "    print(e.status, e)\n"
    )
    for contents, expected in ((data, "already stored, identical"), (data[::-1], "409")):
        (pgdata.wal / name).write_bytes(contents)
        result = subprocess.run(
            [PYTHON, "-c", race, str(AGENT.parent), str(conf), name, str(pgdata.wal / name)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(expected) or expected in result.stdout, result.stdout
        assert stored(moto, pgdata.key(name)) == before


# --- the HTTP API itself ----------------------------------------------------------------


def test_socket_is_private_and_bad_requests_are_refused(agent: Agent, pgdata: PgData) -> None:
    assert stat.S_IMODE(agent.sock.stat().st_mode) == 0o600
    wal = pgdata.wal
    assert ask(agent.sock, "PUT", f"/archive/..%2F..%2Fx?path={wal}/x")[0] == 400
    assert ask(agent.sock, "PUT", "/archive/000000010000000000000001?path=pg_wal/x")[0] == 400
    assert ask(agent.sock, "GET", "/nothing")[0] == 404
    missing = f"/archive/000000010000000000000002?path={wal}/000000010000000000000002"
    assert ask(agent.sock, "PUT", missing)[0] == 400  # no such file: never a quiet 404
    assert archive(agent, pgdata, "000000010000000000000001", b"wal").returncode == 0
    result = run(agent.restore_sh, "000000010000000000000001", "no/such/dir/X", pgdata.path)
    assert result.returncode == 1 and "no such file or directory" in result.stderr
    status, body = ask(agent.sock, "GET", "/health?s3=1")
    assert status == 200 and json.loads(body)["s3"] == "ok"
    assert run(agent.archive_sh, "pg_wal/x", "../../x", pgdata.path).returncode == 3


def test_agent_refuses_a_config_others_can_read(tmp_path: Path, moto: Moto) -> None:
    conf = tmp_path / "wal.conf"
    write_config(conf, moto.endpoint, tmp_path / "wal.sock")
    conf.chmod(0o644)
    result = subprocess.run(
        [PYTHON, str(AGENT), "--config", str(conf)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0 and "make it mode 0600" in result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_one_shot_mode_archives_and_restores(
    moto: Moto, agent: Agent, pgdata: PgData, tmp_path: Path
) -> None:
    """The process-per-file mode (the benchmark's baseline) shares the code and layout."""
    conf = tmp_path / "wal.conf"
    write_config(conf, moto.endpoint, tmp_path / "unused.sock")
    name = "000000010000000000000030"
    data = wal_like(SEGMENT, 30)
    (pgdata.wal / name).write_bytes(data)
    cmd = [PYTHON, str(AGENT), "--config", str(conf)]
    one = subprocess.run(
        [*cmd, "archive", name, f"pg_wal/{name}"],
        cwd=pgdata.path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert one.returncode == 0, one.stderr
    assert restore(agent, pgdata, name).returncode == 0  # the daemon finds it
    assert (pgdata.wal / "RECOVERYXLOG").read_bytes() == data
    missing = subprocess.run(
        [*cmd, "restore", "0000000100000000000000FE", "pg_wal/X"],
        cwd=pgdata.path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1 and "not in the archive" in missing.stderr


# --- rendered files ---------------------------------------------------------------------


def test_config_renders_as_toml_with_any_secret(tmp_path: Path) -> None:
    conf = tmp_path / "wal.conf"
    write_config(conf, "https://nyc3.digitaloceanspaces.com", Path("/run/lifeboat/wal.sock"))
    parsed = tomllib.loads(conf.read_text())
    assert parsed["secret_key"] == SECRET
    assert parsed["ca_bundle"] == "" and parsed["max_attempts"] == 3


@pytest.mark.parametrize("template", ["wal/archive.sh.j2", "wal/restore.sh.j2"])
def test_scripts_pass_bash_n_and_shellcheck(template: str, tmp_path: Path) -> None:
    script = render_script(template, tmp_path / "script", Path("/run/lifeboat/wal.sock"))
    assert subprocess.run(["bash", "-n", str(script)], timeout=30).returncode == 0
    shellcheck = shutil.which("shellcheck")
    if shellcheck:
        result = subprocess.run([shellcheck, str(script)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is not installed: apt-get install -y systemd")
    unit = tmp_path / "lifeboat-wal-agent.service"
    unit.write_text(render("wal/lifeboat-wal-agent.service.j2"))
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 0 and lines == [], lines
    text = unit.read_text()
    for directive in ("User=postgres", "Type=notify", "RuntimeDirectory=lifeboat", "UMask=0077"):
        assert directive in text
    assert f"ExecStart={PYTHON} /usr/local/lib/lifeboat/wal_agent.py" in text
