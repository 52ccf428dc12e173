"""Restore a base backup into a throwaway PostgreSQL on a database droplet, and prove it
accepts writes: the seed of the restore drill, and what the backup benchmark times.

The throwaway server lives beside the droplet's real one and must never disturb it: its
own directory (data, socket, log, hba file), its own port, no TCP listener, and
`archive_mode = off` so that after promotion it never writes into the stack's archive
(its new timeline would otherwise land among the real cluster's WAL). It replays the
archive to its end (`recovery.signal`, no recovery target), promotes, and is judged
ready only when a write commits: a server that answers read-only queries has not
finished recovery, and the drill's RTO is time-to-writable, not time-to-connect.

Never a silent partial restore. PostgreSQL ends recovery at the first WAL file its
restore_command does not deliver, and then promotes as if the archive had ended there.
So the restore_command is `wal-restore --strict`: only "not in the archive" ends
recovery; a corrupt object, S3 failing or the WAL agent not answering exit above 125,
and PostgreSQL aborts recovery (FATAL, with the object named in its log). Then, once the
server is writable, replay is checked against the archive as it was listed before
recovery began (or a target LSN the caller gives): it must have replayed the newest
archived segment on its timeline's path, else the restore fails naming the segment it
stopped at.

Everything runs over SSH through `tasks.hosts` as root, with PostgreSQL work done as the
postgres user. No secrets pass here: the base backup is fetched by basebackup.py and WAL
by the WAL agent, both with the droplet's own 0600 config.
"""

from __future__ import annotations

import re
import shlex
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from fabric import Connection

from tasks import catalog, sql
from tasks.backup import run_program
from tasks.hosts import run

PG_BIN = "/usr/lib/postgresql/15/bin"
# Strict: trouble aborts recovery instead of ending it (templates/wal/restore.sh.j2).
WAL_RESTORE = "/usr/local/lib/lifeboat/wal-restore --strict %f %p"
ROOT = "/var/lib/postgresql/lifeboat-restore"
AS_POSTGRES = "runuser -u postgres --"
# A scratch name becomes a directory and part of cluster_name: keep it to safe characters.
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,40}")
# The write that proves the server left recovery: pg_is_in_recovery() turns false a moment
# before the first transaction can get an xid, so commit something real instead.
PROBE_SQL = (
    "CREATE TABLE IF NOT EXISTS lifeboat_restore_probe (at timestamptz NOT NULL);"
    " INSERT INTO lifeboat_restore_probe VALUES (now());"
)


class RestoreError(RuntimeError):
    pass


@dataclass(frozen=True)
class Scratch:
    """Where one throwaway server lives on a droplet; every path derives from the name,
    so cleanup needs nothing but the name."""

    name: str
    port: int
    root: str = ROOT

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"scratch name {self.name!r}: use lowercase letters, digits, '-'")
        if not 1024 < self.port < 65536 or self.port == 5432:
            raise ValueError(f"port {self.port}: pick a free unprivileged port other than 5432")

    @property
    def base(self) -> str:
        return f"{self.root}/{self.name}"

    @property
    def data(self) -> str:
        return f"{self.base}/data"

    @property
    def socket_dir(self) -> str:
        return f"{self.base}/socket"

    @property
    def log(self) -> str:
        return f"{self.base}/postgresql.log"

    @property
    def hba(self) -> str:
        return f"{self.base}/pg_hba.conf"


@dataclass(frozen=True)
class RestoreTimings:
    """Seconds, measured on the orchestrator around each step (SSH round trips included,
    a few ms each); `fetch` is download + decompress + extract + fsync."""

    fetch: float
    recovery: float  # server start until a write commits (WAL replay, promotion)
    total: float
    bytes: int  # stored (compressed) bytes fetched
    replay: Replay | None = None  # how far replay got, checked against the archive
    last_commit: float | None = None  # a point-in-time restore: the last commit replayed


@dataclass(frozen=True)
class Replay:
    """How far a restore's replay got: the timeline it replayed and the last LSN, the
    segment holding that LSN, and what it had to reach (the newest archived segment on
    the timeline's path, or the caller's target LSN)."""

    timeline: int
    lsn: int
    segment: str
    expected: str  # a segment name, or an LSN ("16/B374D848") when the caller gave one

    @property
    def lsn_text(self) -> str:
        return f"{self.lsn >> 32:X}/{self.lsn & 0xFFFFFFFF:X}"


def check_replay(
    archived: list[str],
    promoted_history: str,
    replayed_lsn: int,
    segment_size: int,
    target_lsn: int | None = None,
) -> Replay:
    """Whether replay reached the end of the archive (or target_lsn); RestoreError naming
    the segment it stopped at when it did not.

    `archived`: the WAL file names in the archive, listed before recovery began.
    `promoted_history`: the history file of the timeline promotion created; its last line
    names the timeline replayed (and its ancestors before it). A segment counts when it
    lies on that path: on the replayed timeline, or on an ancestor before the point where
    its child began (a segment of an abandoned branch, archived by an old primary after
    a failover, is not WAL this recovery could ever replay)."""
    lines = catalog.parse_history(promoted_history)
    if not lines:
        raise RestoreError("the promoted timeline's history file names no parent timeline")
    timeline = lines[-1][0]
    # The segment holding the last byte replayed (an LSN at a boundary ends the previous).
    segno = max(replayed_lsn - 1, 0) // segment_size
    stopped = catalog.segment_name(timeline, segno, segment_size)
    if target_lsn is not None:
        wanted = f"{target_lsn >> 32:X}/{target_lsn & 0xFFFFFFFF:X}"
        replay = Replay(timeline, replayed_lsn, stopped, wanted)
        if replayed_lsn < target_lsn:
            raise RestoreError(
                f"replay stopped at {replay.lsn_text} in segment {stopped}, short of the "
                f"target {wanted}: the restore is incomplete"
            )
        return replay
    ends: dict[int, float] = {}  # timeline on the path -> LSN where its child begins
    newer_begins = float("inf")
    for tli, begins in catalog.timeline_begins(timeline, lines[:-1]):
        ends[tli] = newer_begins
        newer_begins = begins
    on_path = []
    for name in archived:
        if catalog.SEGMENT.match(name) is None or "." in name:
            continue  # .partial, .backup and history files are never replayed as such
        parsed = catalog.parse_segment(name, segment_size)
        if parsed is None:
            continue
        tli, n = parsed
        if tli in ends and n * segment_size < ends[tli]:
            on_path.append((n, tli, name))
    if not on_path:
        raise RestoreError(
            f"the archive holds no WAL segment on timeline {timeline}'s path: nothing "
            f"to check replay (stopped at {stopped}) against"
        )
    newest_segno, _, newest = max(on_path)
    replay = Replay(timeline, replayed_lsn, stopped, newest)
    if segno < newest_segno:
        following = catalog.segment_name(timeline, segno + 1, segment_size)
        raise RestoreError(
            f"replay stopped at segment {stopped} (LSN {replay.lsn_text}), but the archive "
            f"holds WAL up to {newest}: {following} or a later segment was not restored, "
            "the restore is incomplete"
        )
    return replay


def server_options(
    s: Scratch, restore_command: str | None, target_time: str | None = None
) -> list[str]:
    """postgres `-c` options that override whatever the backup's own configuration says
    (Patroni's postgresql.conf and postgresql.auto.conf come back with the backup: its
    port, listen address, archive_command, synchronous_standby_names and, from a replica,
    primary_conninfo would make the scratch server collide with, wait for, archive into
    or stream from the real cluster). `restore_command` None keeps the one the restore
    tool wrote into postgresql.auto.conf (pgBackRest does)."""
    opts = {
        "port": str(s.port),
        "listen_addresses": "",  # unix socket only: nothing outside the droplet reaches it
        "unix_socket_directories": s.socket_dir,
        "hba_file": s.hba,
        "cluster_name": f"lifeboat-restore-{s.name}",
        "archive_mode": "off",  # never write the new timeline into the stack's archive
        "primary_conninfo": "",
        "primary_slot_name": "",
        "synchronous_standby_names": "",  # no standby will ever confirm a commit here
        "recovery_target_timeline": "latest",
        "hot_standby": "off",  # no read-only phase: connections wait for promotion
        "logging_collector": "off",
        "log_destination": "stderr",
    }
    if restore_command is not None:
        opts["restore_command"] = restore_command
    # A replica's configuration (Patroni's recovery section) sets every recovery target
    # to ''; set after a target from here, any of them is "multiple recovery targets"
    # (FATAL). Given here, they outrank the file's.
    for other in ("", "_lsn", "_name", "_xid", "_time"):
        opts[f"recovery_target{other}"] = ""
    if target_time is not None:
        # Promote at the target, never pause there. PostgreSQL >= 14 fails recovery
        # (FATAL) when the archive ends before the target: never a silent early stop.
        del opts["recovery_target_time"]  # after the others: a dict keeps insertion order
        opts["recovery_target_time"] = target_time
        opts["recovery_target_action"] = "promote"
    return [item for key, value in opts.items() for item in ("-c", f"{key}={value}")]


def prepare(conn: Connection, s: Scratch) -> None:
    """An empty data directory, socket directory and a peer-only hba file, all postgres's.
    Refuses to reuse a scratch that exists (a previous run's leftovers may be a running
    server: `cleanup` it first) or a port something already listens on."""
    if run(conn, f"test -e {shlex.quote(s.base)}", warn=True, timeout=30).ok:
        raise RestoreError(f"{s.base} exists on {conn.host}: clean up scratch {s.name!r} first")
    # The scratch server listens on its own socket only; a TCP listener on its port
    # still means someone else chose it, and two scratch servers should not share one.
    if run(conn, f"ss -Hltn 'sport = :{s.port}'", warn=True, timeout=30).stdout.strip():
        raise RestoreError(f"port {s.port} is in use on {conn.host}")
    hba = "local all all peer\\n"
    run(
        conn,
        f"install -d -o postgres -g postgres -m 0700 {shlex.quote(s.root)} "
        f"{shlex.quote(s.base)} {shlex.quote(s.data)} {shlex.quote(s.socket_dir)}"
        f" && printf '{hba}' > {shlex.quote(s.hba)}"
        f" && chown postgres:postgres {shlex.quote(s.hba)} && chmod 0600 {shlex.quote(s.hba)}",
        timeout=30,
    )


def fetch(conn: Connection, s: Scratch, key: str, sha256: str, timeout: int = 1800) -> dict:
    """Lifeboat's base backup object into the scratch data directory (basebackup.py
    restore: streamed, checked against the manifest's SHA-256, every file fsynced)."""
    args = (
        f"restore --key {shlex.quote(key)} --sha256 {shlex.quote(sha256)} "
        f"--pgdata {shlex.quote(s.data)}"
    )
    return run_program(conn, args, "base backup restore", timeout, RestoreError)


def start(
    conn: Connection,
    s: Scratch,
    restore_command: str | None = WAL_RESTORE,
    target_time: str | None = None,
) -> None:
    """Start archive recovery (recovery.signal) to the end of the archive, or to
    `target_time` ("2026-11-30 14:02:00+00"). Returns at once; `wait_writable` tells when
    recovery is over."""
    data = shlex.quote(s.data)
    run(
        conn,
        f"{AS_POSTGRES} touch {data}/recovery.signal && rm -f {data}/standby.signal",
        timeout=30,
    )
    opts = shlex.join(server_options(s, restore_command, target_time))
    run(
        conn,
        f"{AS_POSTGRES} {PG_BIN}/pg_ctl start --no-wait -D {data} -l {shlex.quote(s.log)} "
        f"-o {shlex.quote(opts)}",
        timeout=60,
    )


def wait_writable(conn: Connection, s: Scratch, timeout: float = 900) -> float:
    """Polls (every 50 ms, on the droplet, so SSH latency does not blur the figure) until
    PROBE_SQL commits; returns the seconds it took. Fails early, with the log's tail, when
    the server stops (a missing WAL file before consistency, a bad setting)."""
    pid = shlex.quote(f"{s.data}/postmaster.pid")
    psql = sql.command(scratch_target(s), PROBE_SQL)
    script = f"""
start=$(date +%s.%N); deadline=$(( $(date +%s) + {int(timeout)} )); seen=0
while :; do
    if {psql} >/dev/null 2>&1; then
        echo "ok $(awk "BEGIN {{ print $(date +%s.%N) - $start }}")"; exit 0
    fi
    if [ -e {pid} ]; then seen=1
    elif [ $seen = 1 ] || [ $(( $(date +%s) - ${{start%.*}} )) -gt 10 ]; then
        echo stopped; exit 0
    fi
    [ $(date +%s) -gt $deadline ] && {{ echo timeout; exit 0; }}
    sleep 0.05
done
"""
    res = run(conn, f"bash -c {shlex.quote(script)}", timeout=int(timeout) + 60)
    word, _, seconds = res.stdout.strip().partition(" ")
    if word == "ok":
        return float(seconds)
    tail = run(conn, f"tail -n 15 {shlex.quote(s.log)}", warn=True, timeout=30).stdout
    state = "stopped" if word == "stopped" else f"not writable after {timeout:.0f}s"
    raise RestoreError(f"scratch server {s.name} on {conn.host} {state}; its log ends:\n{tail}")


def archived_wal(conn: Connection, s: Scratch) -> list[str]:
    """The WAL file names archived for the restored cluster (its system identifier from
    the restored pg_control), listed on the droplet by basebackup.py."""
    args = f"wal-list --pgdata {shlex.quote(s.data)}"
    return run_program(conn, args, "listing the WAL archive", 600, RestoreError)["names"]


def scratch_target(s: Scratch) -> sql.Target:
    return sql.Target(
        host=s.socket_dir,
        port=s.port,
        user="postgres",
        database="postgres",
        psql=f"{PG_BIN}/psql",
    )


def pg_time(epoch: float) -> str:
    """Epoch seconds as a timestamptz literal PostgreSQL reads exactly (UTC, microseconds)."""
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f+00")


def last_replayed_commit(conn: Connection, s: Scratch) -> float | None:
    """Epoch seconds of the last transaction recovery replayed (None: it replayed none)."""
    row = sql.query(
        conn, "SELECT extract(epoch FROM pg_last_xact_replay_timestamp())", scratch_target(s)
    )
    return float(row) if row else None


def replayed(conn: Connection, s: Scratch) -> tuple[int, int, str]:
    """(last LSN replayed, WAL segment size, the promoted timeline's history file) of the
    scratch server, once it is writable."""
    target = scratch_target(s)
    row = sql.query(
        conn,
        "SELECT pg_last_wal_replay_lsn(),"
        " (SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'),"
        " substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)",
        target,
    )
    lsn, size, timeline = row.split("|")
    if not lsn:
        raise RestoreError(f"scratch server {s.name} on {conn.host} reports no replayed WAL")
    history = sql.query(
        conn, f"SELECT pg_read_file({sql.literal(f'pg_wal/{timeline}.history')})", target
    )
    return catalog.lsn(lsn), int(size), history


def restore(
    conn: Connection,
    s: Scratch,
    key: str,
    sha256: str,
    timeout: float = 1800,
    *,
    restore_command: str = WAL_RESTORE,
    target_lsn: str | None = None,
    target_time: float | None = None,
) -> RestoreTimings:
    """The whole restore of a Lifeboat base backup (object `key`, SHA-256 from its
    manifest) into scratch `s`, replaying the WAL agent's archive to its end (or to
    `target_time`, epoch seconds, then promoting), until a write commits; then replay is
    checked against the archive listed before recovery began, or against `target_lsn`
    ("16/B374D848") when given, or, for a target time, that no transaction after it was
    replayed. RestoreError when the server stops (a corrupt or unreachable WAL object: its
    log names it; an archive that ends before the target time) or replay fell short. The
    server is left running for checks: call `cleanup` after."""
    t0 = time.monotonic()
    prepare(conn, s)
    fetched = fetch(conn, s, key, sha256, timeout=int(timeout))
    to_end = target_lsn is None and target_time is None
    archived = archived_wal(conn, s) if to_end else []
    t1 = time.monotonic()
    start(conn, s, restore_command, None if target_time is None else pg_time(target_time))
    wait_writable(conn, s, timeout=timeout)
    t2 = time.monotonic()
    if target_time is not None:
        last = last_replayed_commit(conn, s)
        if last is not None and last > target_time:
            raise RestoreError(
                f"restore into scratch {s.name} on {conn.host} replayed a commit at "
                f"{pg_time(last)}, after the target {pg_time(target_time)}"
            )
        return RestoreTimings(
            fetch=t1 - t0,
            recovery=t2 - t1,
            total=t2 - t0,
            bytes=fetched["bytes"],
            last_commit=last,
        )
    lsn, segment_size, history = replayed(conn, s)
    target = catalog.lsn(target_lsn) if target_lsn is not None else None
    try:
        replay = check_replay(archived, history, lsn, segment_size, target)
    except RestoreError as e:
        raise RestoreError(f"restore into scratch {s.name} on {conn.host}: {e}") from None
    return RestoreTimings(
        fetch=t1 - t0, recovery=t2 - t1, total=t2 - t0, bytes=fetched["bytes"], replay=replay
    )


def cleanup(conn: Connection, s: Scratch) -> bool:
    """Stop the scratch server (immediate: it is disposable) and delete its directory.
    Idempotent; returns whether anything was there."""
    if not run(conn, f"test -e {shlex.quote(s.base)}", warn=True, timeout=30).ok:
        return False
    if run(conn, f"test -e {shlex.quote(s.data)}/postmaster.pid", warn=True, timeout=30).ok:
        run(
            conn,
            f"{AS_POSTGRES} {PG_BIN}/pg_ctl stop -m immediate -w -t 60 -D {shlex.quote(s.data)}",
            warn=True,
            timeout=120,
        )
    run(conn, f"rm -rf --one-file-system {shlex.quote(s.base)}", timeout=300)
    return True
