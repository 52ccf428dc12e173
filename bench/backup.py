"""Benchmark of backups in the local cloud (not a test): Lifeboat vs pgBackRest, side by
side in one run. Prints figures, asserts nothing.

    uv run python -m bench.backup [--scale 50] [--rounds 3] [--backlog 160] [--rate 48] [--keep]

Stack `kbench` (examples/compact.yaml, 3 db + 1 web, VPC 10.130.0.0/16) is destroyed and
built again (provision + cluster), a pgbench database of scale 50 (~750 MB) is made, and
on the primary:
- --rounds alternating rounds (Lifeboat first in odd rounds, pgBackRest first in even
  ones), each: a base backup by each tool, then a restore of each to the same target time
  (taken after both backups) into a fresh directory on the same droplet, until a write
  commits. Like for like: zstd level 1 and two threads on both sides (Lifeboat's default;
  pgBackRest `compress-level=1`, `process-max=2`), one archive_command that archives to
  both (`wal-archive && pgbackrest archive-push`), and the same work timed: pgBackRest's
  `backup` includes its archive check (the backup's last segment archived) and expire, so
  Lifeboat's side is its whole backup step (basebackup.py take, the manifest, the last
  segment switched and archived, the archive listed for gaps, retention). Restores:
  Lifeboat's `tasks/restore.py` with `recovery_target_time` vs `pgbackrest restore
  --type=time --target-action=promote`, each replaying its own archive. Each figure is
  the median [min-max] of the rounds; the ratio is of the medians, then per round.
- WAL backlog drain (one run per tool): archive_command '/bin/false' (through Patroni's
  dynamic config) while pgbench runs until --backlog segments wait, then the tool's
  command; segments/s from the moment the server runs the new command until
  archive_status has no .ready;
- segment delay (one run per tool): .ready appears -> .ready gone, polled every 50 ms,
  while pgbench emits ~--rate MB/s of WAL for --seconds (measured rate printed), and
  whether the backlog grew.
pgBackRest is Debian's (2.45): compress-type=zst, repo1-bundle=y, archive-async=y with a
spool path, S3 path-style to the same server and bucket under its own repo path; its keys
live in a 0600 config on the droplet only.

WAL payload: pg_logical_emit_message of 1 MiB rows that are a quarter md5 hex and the
rest filler, so segments compress about 8:1 (what pgBackRest measured on real WAL here)
rather than the 1000:1 of repeat('x').
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from fabric import Connection

from blocks.credentials import DigitalOceanCredentials, SpacesCredentials
from blocks.stack import StackSpec
from flows.cluster import cluster
from flows.provision import provision
from flows.up import up
from lab import lifecycle
from lab.credentials import save_blocks
from tasks import backup, droplets, patroni, restore, spaces, wal
from tasks import context as rm
from tasks.hosts import Host, put, run

STACK = "kbench"
VPC = "10.130.0.0/16"
DB = "bench"
PG_BIN = "/usr/lib/postgresql/15/bin"
PSQL = f"cd / && runuser -u postgres -- {PG_BIN}/psql -XAtq -h /var/run/postgresql"
AS_PG = "runuser -u postgres --"
WORK = "/var/lib/postgresql/lifeboat-bench"  # scripts placed on the primary
PGDATA = "/var/lib/postgresql/15/patroni"
LIFEBOAT_ARCHIVE = "/usr/local/lib/lifeboat/wal-archive %p %f"
PGBR_CONF = "/etc/pgbackrest.conf"  # Debian's pgbackrest reads this by default
PGBR_ARCHIVE = f"pgbackrest --stanza={STACK} archive-push %p"
# Both archives hold every segment while the rounds run: each tool restores from its own.
BOTH_ARCHIVE = f"{LIFEBOAT_ARCHIVE} && {PGBR_ARCHIVE}"
PGBR_REPO = "pgbackrest-bench"  # repo paths in the stack's bucket, beside Lifeboat's prefix
# A repo of its own per run: the lab's S3 still lists deleted objects' directories in a
# versioned bucket, and stanza-create refuses a repo whose directories are not empty.
RUN_REPO = f"{PGBR_REPO}/{time.strftime('%Y%m%dT%H%M%S')}"
TOOLS = ("lifeboat", "pgbackrest")
SPACES_IP, SPACES_DNS = "198.18.0.1", "spaces.lab"  # the lab's S3 terminator and its name

EMIT_SQL = (
    "\\set id random(1, 8)\n"
    "SELECT pg_logical_emit_message(false, 'bench', body) FROM bench_payload WHERE id = :id;\n"
)
PAYLOAD_SQL = """
CREATE TABLE IF NOT EXISTS bench_payload (id int PRIMARY KEY, body text NOT NULL);
INSERT INTO bench_payload
SELECT i, (SELECT string_agg(md5(random()::text || i || g), '') FROM generate_series(1, 8192) g)
          || repeat('pgbench filler ', 52429)
FROM generate_series(1, 8) i ON CONFLICT (id) DO NOTHING;
"""

# On the droplet, as postgres: watches pg_wal/archive_status. Modes:
#  build N SECS  -- pgbench (tpcb-like + emit) until N .ready files wait (or SECS pass)
#  drain CMD SECS -- waits until the server runs archive_command CMD, then until no .ready
#  load RATE SECS -- pgbench at RATE x 1 MiB/s of WAL; delays of .ready files, WAL rate
WATCH_PY = r"""
import json, os, signal, statistics, subprocess, sys, time
STATUS = "%(pgdata)s/pg_wal/archive_status"
PSQL = ["%(pg_bin)s/psql", "-XAtq", "-h", "/var/run/postgresql", "-d", "%(db)s", "-c"]
PGBENCH = ["%(pg_bin)s/pgbench", "-n", "-h", "/var/run/postgresql", "%(db)s"]
EMIT = "%(work)s/emit.sql"

def sql(q):
    return subprocess.run(PSQL + [q], capture_output=True, text=True, check=True).stdout.strip()

def ready():
    return {f[:-6] for f in os.listdir(STATUS) if f.endswith(".ready")}

def lsn():
    return int(sql("SELECT pg_current_wal_lsn() - '0/0'"))

mode, arg, secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
out = {}
if mode == "build":
    t0, l0 = time.monotonic(), lsn()
    p = subprocess.Popen(PGBENCH + ["-c", "4", "-j", "2", "-T", str(int(secs)),
                                    "-b", "tpcb-like@1", "-f", EMIT + "@1"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while p.poll() is None and len(ready()) < int(arg):
        time.sleep(0.25)
    if p.poll() is None:
        p.send_signal(signal.SIGINT)
    p.wait()
    out = {"ready": len(ready()), "seconds": time.monotonic() - t0, "wal_bytes": lsn() - l0}
elif mode == "drain":
    t0 = time.monotonic()
    while sql("SHOW archive_command") != arg:
        if time.monotonic() - t0 > 120:
            sys.exit("archive_command never became " + arg)
        time.sleep(0.05)
    t1 = time.monotonic()
    n = len(ready())
    while ready():
        if time.monotonic() - t1 > secs:
            break
        time.sleep(0.05)
    out = {"segments": n, "seconds": time.monotonic() - t1, "left": len(ready()),
           "waited_for_reload": t1 - t0}
elif mode == "load":
    seen, delays = {}, []
    start_ready = len(ready())
    l0, t0 = lsn(), time.monotonic()
    p = subprocess.Popen(PGBENCH + ["-c", "2", "-j", "2", "-R", arg, "-T", str(int(secs)),
                                    "-f", EMIT], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    first = ready()  # already waiting when the load starts: not timed
    while p.poll() is None:
        now, current = time.monotonic(), ready()
        for name in current - first:
            seen.setdefault(name, now)
        for name in [n for n in seen if n not in current]:
            delays.append(now - seen.pop(name))
        first &= current
        time.sleep(0.05)
    t1, l1 = time.monotonic(), lsn()
    end_ready = ready()
    tps = [l for l in p.stdout.read().splitlines() if l.startswith("tps")]
    out = {"start_ready": start_ready, "end_ready": len(end_ready), "delays": delays,
           "pending_ages": [t1 - t for t in seen.values()], "seconds": t1 - t0,
           "wal_bytes": l1 - l0, "tps": tps[:1]}
print(json.dumps(out))
"""


@dataclass
class Figures:
    """One tool's single-run results (the rounds are `Round`s)."""

    drain: dict[str, Any] = field(default_factory=dict)
    load: dict[str, Any] = field(default_factory=dict)


# --- the stack ------------------------------------------------------------------------


def bench_spec() -> StackSpec:
    """examples/compact.yaml as kbench: own VPC range, one web droplet (4 droplets)."""
    data = StackSpec.from_yaml("examples/compact.yaml").model_dump()
    data.update(name=STACK, vpc_cidr=VPC)
    for group in data["groups"]:
        if "wordpress" in group["roles"]:
            group["count"] = 1
    return StackSpec.model_validate(data)


def stack_up(spec: StackSpec, credentials: str, reuse: bool) -> None:
    if not reuse:
        gone = droplets.destroy_stack(droplets.api(DigitalOceanCredentials.load(credentials)), spec)
        print(f"destroyed first: {', '.join(gone) or 'nothing'}")
    t0 = time.monotonic()
    provision(spec, credentials)
    cluster(spec, credentials)
    print(f"stack {spec.name} up (provision + cluster) in {time.monotonic() - t0:.0f} s")


def whole_stack_up(spec: StackSpec, reuse: bool) -> tuple[str, Any]:
    """The lab's blocks saved, `spec`'s stack destroyed first (unless `reuse`) and brought
    up whole (`up`: cluster and site), timed. Returns (credentials block name, pydo
    client), for the benchmarks that need a site (bench.drill, bench.failover)."""
    credentials = save_blocks(lifecycle.info())
    do = droplets.api(DigitalOceanCredentials.load(credentials))
    if not reuse:
        droplets.destroy_stack(do, spec)
    t0 = time.monotonic()
    up(spec, credentials)
    print(f"stack {spec.name} up in {time.monotonic() - t0:.0f} s", flush=True)
    return credentials, do


def primary_of(conn: Connection, hosts: list[Host]) -> Host:
    members = patroni.cluster(conn, hosts[0].private_ip)
    (leader,) = [m for m in members if m.is_leader]
    return next(h for h in hosts if h.name == leader.name)


# --- on the primary ---------------------------------------------------------------------


def psql(conn: Connection, query: str, db: str = "postgres", timeout: int = 120) -> str:
    return run(conn, f"{PSQL} -d {db} -c {shlex.quote(query)}", timeout=timeout).stdout.strip()


def watch(conn: Connection, *args: str, timeout: int = 900) -> dict:
    cmd = " ".join(shlex.quote(a) for a in args)
    res = run(conn, f"cd {WORK} && {AS_PG} python3 {WORK}/watch.py {cmd}", timeout=timeout)
    return json.loads(res.stdout.strip().splitlines()[-1])


def set_archive_command(conn: Connection, command: str) -> None:
    """Through Patroni's dynamic configuration (Patroni overrides ALTER SYSTEM)."""
    patch = {"postgresql": {"parameters": {"archive_command": command}}}
    put(conn, patroni.PATCH_FILE, json.dumps(patch), "0600", "root:root")
    run(
        conn,
        f"{patroni.PATRONICTL} edit-config --force --quiet --apply {patroni.PATCH_FILE}",
        timeout=60,
    )


def wait_archive_command(conn: Connection, command: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while psql(conn, "SHOW archive_command") != command:
        if time.monotonic() > deadline:
            raise RuntimeError(f"archive_command did not become {command!r}")
        time.sleep(0.5)


def ready_count(conn: Connection) -> int:
    out = run(conn, f"ls {PGDATA}/pg_wal/archive_status | grep -c '\\.ready$'", warn=True)
    return int(out.stdout.strip() or 0)


def wait_no_backlog(conn: Connection, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while (n := ready_count(conn)) > 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{n} WAL files still waiting after {timeout:.0f}s")
        time.sleep(1)


def prepare_primary(conn: Connection, scale: int) -> None:
    """Bench scripts, the payload table and pgbench data (kept when already at `scale`)."""
    run(conn, f"install -d -o postgres -g postgres -m 0700 {WORK}")
    script = WATCH_PY % {"pgdata": PGDATA, "pg_bin": PG_BIN, "db": DB, "work": WORK}
    put(conn, f"{WORK}/watch.py", script, "0644", "postgres:postgres")
    put(conn, f"{WORK}/emit.sql", EMIT_SQL, "0644", "postgres:postgres")
    if not psql(conn, f"SELECT 1 FROM pg_database WHERE datname = '{DB}'"):
        psql(conn, f"CREATE DATABASE {DB}")
    have = 0
    if psql(conn, "SELECT to_regclass('pgbench_branches') IS NOT NULL", db=DB) == "t":
        have = int(psql(conn, "SELECT count(*) FROM pgbench_branches", db=DB))
    if int(have) != scale:
        t0 = time.monotonic()
        run(
            conn,
            f"cd {WORK} && {AS_PG} {PG_BIN}/pgbench -i -q -s {scale} -h /var/run/postgresql {DB}",
            timeout=1800,
        )
        print(f"pgbench -i -s {scale}: {time.monotonic() - t0:.0f} s")
    psql(conn, PAYLOAD_SQL, db=DB)
    size = psql(conn, "SELECT pg_size_pretty(sum(pg_database_size(oid))) FROM pg_database")
    print(f"cluster size {size}")


def configure_pgbackrest(conn: Connection, spec: StackSpec, creds: SpacesCredentials) -> None:
    """A 0600 config (the keys never appear on a command line), spool, a fresh stanza."""
    # pgBackRest 2.45 checks the name it connects to against the certificate's DNS names
    # only (the lab's certificate also carries the IP): reach the lab's S3 by its DNS name,
    # which this droplet learns from /etc/hosts.
    address = creds.endpoint.removeprefix("https://").rstrip("/")
    if address == SPACES_IP:
        run(
            conn,
            f"grep -q ' {SPACES_DNS}$' /etc/hosts || echo '{SPACES_IP} {SPACES_DNS}' >> /etc/hosts",
        )
        address = SPACES_DNS
    conf = f"""[global]
repo1-type=s3
repo1-s3-endpoint={address}
repo1-s3-bucket={spec.bucket}
repo1-s3-region={creds.region}
repo1-s3-uri-style=path
repo1-s3-key={creds.access_key.get_secret_value()}
repo1-s3-key-secret={creds.secret_key.get_secret_value()}
repo1-s3-ca-file=/etc/ssl/certs/ca-certificates.crt
repo1-path=/{RUN_REPO}
repo1-bundle=y
repo1-retention-full=2
compress-type=zst
compress-level=1
process-max=2
archive-async=y
spool-path=/var/spool/pgbackrest
start-fast=y
log-level-console=warn
log-level-file=info

[{STACK}]
pg1-path={PGDATA}
pg1-socket-path=/var/run/postgresql
pg1-port=5432
"""
    put(conn, PGBR_CONF, conf, "0600", "postgres:postgres")
    run(
        conn, "install -d -o postgres -g postgres -m 0750 /var/spool/pgbackrest /var/log/pgbackrest"
    )
    run(conn, f"{AS_PG} pgbackrest --stanza={STACK} stanza-create", timeout=120)


def clear_prefix(creds: SpacesCredentials, bucket: str, prefix: str) -> int:
    """Delete every object under prefix (moto keeps them in memory)."""
    s3 = spaces.s3_client(creds)
    n = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
            n += len(keys)
    return n


# --- the measurements ---------------------------------------------------------------


@dataclass
class Round:
    """One round's figures for one tool, in seconds."""

    backup_s: float
    restore: restore.RestoreTimings


def lifeboat_backup(conn: Connection, spec: StackSpec, s3: Any, leader: str) -> tuple[float, dict]:  # noqa: ANN401
    """Lifeboat's whole backup step, as flows/backup.py runs it (from the primary here):
    take, manifest, last segment switched and archived, gaps listed, retention."""
    t0 = time.monotonic()
    facts = backup.take(conn, backup.new_id())
    manifest = backup.write_manifest(s3, spec.bucket, spec.name, facts, source=leader)
    last = wal.verify_archiving(conn, timeout=300)
    _, missing = backup.wal_gaps(s3, spec.bucket, spec.name, manifest, last)
    if missing:
        raise RuntimeError(f"lifeboat backup {facts['id']}: WAL missing: {missing[:5]}")
    backup.apply_retention(s3, spec.bucket, spec.name, 2, 1)
    return time.monotonic() - t0, facts["objects"][0]


def lifeboat_restore(conn: Connection, obj: dict, target: float) -> restore.RestoreTimings:
    scratch = restore.Scratch("bench-lifeboat", 5433)
    restore.cleanup(conn, scratch)
    try:
        return restore.restore(conn, scratch, obj["key"], obj["sha256"], target_time=target)
    finally:
        restore.cleanup(conn, scratch)


def pgbackrest_backup(conn: Connection) -> tuple[float, str]:
    """`pgbackrest backup` (its archive check and expire included); the backup's label."""
    t0 = time.monotonic()
    run(conn, f"cd {WORK} && {AS_PG} pgbackrest --stanza={STACK} backup --type=full", timeout=1800)
    seconds = time.monotonic() - t0
    info = json.loads(run(conn, f"{AS_PG} pgbackrest --stanza={STACK} info --output=json").stdout)
    return seconds, info[0]["backup"][-1]["label"]


def pgbackrest_restore(conn: Connection, label: str, target: float) -> restore.RestoreTimings:
    scratch = restore.Scratch("bench-pgbackrest", 5434)
    restore.cleanup(conn, scratch)
    try:
        t0 = time.monotonic()
        restore.prepare(conn, scratch)
        when = shlex.quote(restore.pg_time(target))
        run(
            conn,
            f"{AS_PG} pgbackrest --stanza={STACK} --pg1-path={scratch.data} restore "
            f"--set={label} --type=time --target={when} --target-action=promote",
            timeout=1800,
        )
        t1 = time.monotonic()
        restore.start(conn, scratch, restore_command=None)  # pgBackRest wrote its own
        restore.wait_writable(conn, scratch)
        t2 = time.monotonic()
        return restore.RestoreTimings(t1 - t0, t2 - t1, t2 - t0, 0)
    finally:
        restore.cleanup(conn, scratch)


def rounds(conn: Connection, spec: StackSpec, s3: Any, leader: str, n: int) -> dict:  # noqa: ANN401
    """n alternating rounds of backup then restore to a common target time, per tool."""
    out: dict[str, list[Round]] = {tool: [] for tool in TOOLS}
    for i in range(n):
        order = TOOLS if i % 2 == 0 else TOOLS[::-1]
        taken: dict[str, Any] = {}
        backups: dict[str, float] = {}
        for tool in order:
            if tool == "lifeboat":
                backups[tool], taken[tool] = lifeboat_backup(conn, spec, s3, leader)
            else:
                backups[tool], taken[tool] = pgbackrest_backup(conn)
        time.sleep(1)
        target = time.time()
        time.sleep(1)
        # A commit after the target, archived: PostgreSQL 15 fails a recovery that ends
        # before it finds one ("recovery ended before configured recovery target").
        psql(conn, "CREATE TABLE IF NOT EXISTS bench_mark (at timestamptz)", db=DB)
        psql(conn, "INSERT INTO bench_mark VALUES (clock_timestamp())", db=DB)
        wal.verify_archiving(conn, timeout=300)
        for tool in order:
            timings = (
                lifeboat_restore(conn, taken[tool], target)
                if tool == "lifeboat"
                else pgbackrest_restore(conn, taken[tool], target)
            )
            out[tool].append(Round(backups[tool], timings))
        print(
            f"round {i + 1}/{n} ({' first, '.join(order)} second): "
            + "; ".join(
                f"{t} backup {out[t][-1].backup_s:.1f} s, restore {out[t][-1].restore.total:.1f} s"
                for t in TOOLS
            ),
            flush=True,
        )
    return out


def drain(conn: Connection, command: str, backlog: int) -> dict:
    set_archive_command(conn, "/bin/false")
    wait_archive_command(conn, "/bin/false")
    built = watch(conn, "build", str(backlog), "600")
    set_archive_command(conn, command)
    out = watch(conn, "drain", command, "900", timeout=1200)
    out["built"] = built
    out["rate"] = out["segments"] / out["seconds"] if out["seconds"] else 0.0
    print(
        f"drain with {command.split()[0]}: {out['segments']} segments in "
        f"{out['seconds']:.1f} s = {out['rate']:.1f}/s (built in {built['seconds']:.0f} s, "
        f"{built['wal_bytes'] / 1e6:.0f} MB WAL)"
    )
    return out


def load(conn: Connection, command: str, rate: int, seconds: int) -> dict:
    wait_archive_command(conn, command)
    wait_no_backlog(conn)
    out = watch(conn, "load", str(rate), str(seconds), timeout=seconds + 300)
    out["mb_s"] = out["wal_bytes"] / out["seconds"] / (1 << 20)
    d = sorted(out["delays"])
    out["median"] = statistics.median(d) if d else float("nan")
    out["p95"] = d[min(len(d) - 1, int(0.95 * len(d)))] if d else float("nan")
    print(
        f"load with {command.split()[0]}: {out['mb_s']:.1f} MB/s WAL, {len(d)} segments, "
        f"delay median {out['median']:.2f} s p95 {out['p95']:.2f} s, "
        f"ready {out['start_ready']} -> {out['end_ready']}"
    )
    return out


# --- the report -----------------------------------------------------------------------


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} [{min(values):.1f}-{max(values):.1f}]"


def report(
    measured: dict[str, list[Round]],
    figs: dict[str, Figures],
    primary: str,
    args: argparse.Namespace,
) -> None:
    lb, br = figs["lifeboat"], figs["pgbackrest"]

    def ratio(a: float, b: float) -> float:
        return a / b if b else float("nan")

    def grows(f: Figures) -> bool:
        return f.load["end_ready"] > f.load["start_ready"] + 1  # one may be in flight

    rows: list[tuple[str, str, str, str, str]] = []

    def row(label: str, a: str, b: str, r: str = "", target: str = "") -> None:
        rows.append((label, a, b, r, target))

    def timed(label: str, pick: Any, goal: float | None = None) -> None:  # noqa: ANN401
        ours = [pick(r) for r in measured["lifeboat"]]
        theirs = [pick(r) for r in measured["pgbackrest"]]
        r = ratio(statistics.median(ours), statistics.median(theirs))
        per_round = ", ".join(f"{ratio(a, b):.2f}" for a, b in zip(ours, theirs, strict=True))
        verdict = _verdict(r <= goal, f"<= {goal}") if goal is not None else ""
        row(label, spread(ours) + " s", spread(theirs) + " s", f"{r:.2f} ({per_round})", verdict)

    n = len(measured["lifeboat"])
    timed(f"base backup, whole step ({n} rounds)", lambda r: r.backup_s, 0.8)
    timed("restore to a time, to writable", lambda r: r.restore.total, 1.0)
    timed("  of which fetch + extract", lambda r: r.restore.fetch)
    timed("  of which start -> writable", lambda r: r.restore.recovery)
    dr = ratio(lb.drain["rate"], br.drain["rate"])
    row(
        "WAL backlog drain (one run)",
        f"{lb.drain['rate']:.1f} seg/s",
        f"{br.drain['rate']:.1f} seg/s",
        f"{dr:.2f}",
        _verdict(dr >= 1.0, ">= 1.0"),
    )
    row("  backlog drained", f"{lb.drain['segments']} seg", f"{br.drain['segments']} seg")
    row(
        "WAL rate under load (one run)",
        f"{lb.load['mb_s']:.1f} MB/s",
        f"{br.load['mb_s']:.1f} MB/s",
    )
    row(
        "segment delay median",
        f"{lb.load['median']:.2f} s",
        f"{br.load['median']:.2f} s",
        f"{ratio(lb.load['median'], br.load['median']):.2f}",
    )
    row(
        "segment delay p95",
        f"{lb.load['p95']:.2f} s",
        f"{br.load['p95']:.2f} s",
        f"{ratio(lb.load['p95'], br.load['p95']):.2f}",
    )
    row(
        "ready at start -> end of load",
        f"{lb.load['start_ready']} -> {lb.load['end_ready']}",
        f"{br.load['start_ready']} -> {br.load['end_ready']}",
        "",
        _verdict(not grows(lb), "no growing backlog"),
    )
    print(
        f"\nLifeboat vs pgBackRest 2.45, stack {STACK}, pgbench scale {args.scale}, "
        f"primary {primary}, moto S3 behind TLS, zstd level 1 and 2 threads on both sides; "
        "median [min-max]; ratio Lifeboat/pgBackRest of the medians (per round)"
    )
    widths = [max(len(r[i]) for r in [*rows, _HEADER]) for i in range(5)]
    for r in [_HEADER, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


_HEADER = ("", "Lifeboat", "pgBackRest", "ratio", "target")


def _verdict(ok: bool, target: str) -> str:
    return f"{target}: {'met' if ok else 'MISSED'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3, help="alternating backup+restore rounds")
    parser.add_argument("--backlog", type=int, default=160, help="segments to drain")
    parser.add_argument("--rate", type=int, default=48, help="MiB/s of WAL under load")
    parser.add_argument("--seconds", type=int, default=60, help="length of the load")
    parser.add_argument("--keep", action="store_true", help="leave the stack up afterwards")
    parser.add_argument("--reuse", action="store_true", help="do not destroy the stack first")
    parser.add_argument("--only", choices=("drain", "load"), help="one part (with --reuse)")
    args = parser.parse_args()

    info = lifecycle.info()
    credentials = save_blocks(info)
    spec = bench_spec()
    creds = SpacesCredentials.load(credentials)
    stack_up(spec, credentials, args.reuse)
    hosts, remote = rm.load(spec, credentials)
    db_hosts = [h for h in hosts if "postgres" in h.roles]
    figs = {tool: Figures() for tool in TOOLS}
    commands = {"lifeboat": LIFEBOAT_ARCHIVE, "pgbackrest": PGBR_ARCHIVE}
    try:
        with remote.connect(db_hosts[0]) as conn:
            leader = primary_of(conn, db_hosts)
        with remote.connect(leader) as conn:
            print(f"primary: {leader.name}")
            set_archive_command(conn, LIFEBOAT_ARCHIVE)
            if args.only:
                configure_pgbackrest(conn, spec, creds)
                for tool in TOOLS:
                    set_archive_command(conn, commands[tool])
                    if args.only == "drain":
                        drain(conn, commands[tool], args.backlog)
                    else:
                        load(conn, commands[tool], args.rate, args.seconds)
                set_archive_command(conn, LIFEBOAT_ARCHIVE)
                return
            prepare_primary(conn, args.scale)
            wait_archive_command(conn, LIFEBOAT_ARCHIVE)
            wait_no_backlog(conn)
            configure_pgbackrest(conn, spec, creds)
            set_archive_command(conn, BOTH_ARCHIVE)
            wait_archive_command(conn, BOTH_ARCHIVE)
            measured = rounds(conn, spec, spaces.s3_client(creds), leader.name, args.rounds)

            for tool in TOOLS:
                figs[tool].drain = drain(conn, commands[tool], args.backlog)
            for tool in TOOLS:
                set_archive_command(conn, commands[tool])
                figs[tool].load = load(conn, commands[tool], args.rate, args.seconds)

            set_archive_command(conn, LIFEBOAT_ARCHIVE)
            wait_archive_command(conn, LIFEBOAT_ARCHIVE)
        report(measured, figs, leader.name, args)
    finally:
        rm.save_pins(credentials, remote)
        if not args.keep:
            droplets.destroy_stack(droplets.api(DigitalOceanCredentials.load(credentials)), spec)
            for prefix in (f"{PGBR_REPO}/", f"{spec.name}/"):
                clear_prefix(creds, spec.bucket, prefix)
            print(f"stack {spec.name} destroyed, its objects deleted")


if __name__ == "__main__":
    main()
