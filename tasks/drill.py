"""The restore drill's proof: a marker committed on the primary before the drill, and the
checks run on the server restored from the backups.

The marker is one row in `lifeboat_drill_marker`, inserted in the same statement (one
snapshot) that counts the rows of the site's tables, so the counts are exactly what the
database held when the marker committed. The WordPress options table is left out of the
comparison: WP-Cron rewrites its transients every minute, so its count moves on its own.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fabric import Connection
from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.secrets import WORDPRESS_ADMIN
from tasks import backup, layout, restore, scratch, site, spaces, sql, wal
from tasks.backup import Entry
from tasks.hosts import Host, run
from tasks.packages import install_packages
from tasks.restore import AS_POSTGRES, PG_BIN, Scratch, scratch_target

if TYPE_CHECKING:
    from tasks.context import StackContext

TABLE = "lifeboat_drill_marker"
_IDENT = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class DrillError(RuntimeError):
    pass


class DrillFailed(RuntimeError):
    """The drill did not prove the restore (or could not start): says what did not hold."""


SCRATCH = Scratch("drill", 5499)


@dataclass(frozen=True)
class Marker:
    token: str
    committed_at: float  # epoch seconds, on the primary's clock
    database: str
    counts: dict[str, int] = field(default_factory=dict)  # table -> rows, with the marker


def counted_tables(conn: Connection, database: str, prefix: str, target: sql.Target) -> list[str]:
    """The site's tables (named with its prefix) whose counts a restore must match."""
    like = sql.literal(prefix.replace("_", "\\_") + "%")
    rows = sql.query(
        conn,
        f"SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE {like}"
        " ORDER BY 1",
        _in(target, database),
    )
    skip = {f"{prefix}options"}  # WP-Cron's transients change it every minute
    return [t for t in rows.split() if t not in skip and _IDENT.fullmatch(t)]


def _in(target: sql.Target, database: str) -> sql.Target:
    return dataclasses.replace(target, database=database)


def _counts_sql(tables: list[str]) -> str:
    """The tables' counts as select-list items, each after a comma ('' for none)."""
    return "".join(f", (SELECT count(*) FROM {t})" for t in tables)


def write_marker(conn: Connection, database: str, tables: list[str]) -> Marker:
    """On the primary (as postgres over its socket): the marker row and the tables' counts,
    in one statement. The caller then closes the WAL segment and waits for it archived."""
    token = secrets.token_hex(8)
    target = _in(sql.LOCAL, database)
    sql.query(
        conn,
        f"CREATE TABLE IF NOT EXISTS {TABLE} (token text PRIMARY KEY,"
        " at timestamptz NOT NULL DEFAULT clock_timestamp())",
        target,
    )
    row = sql.query(
        conn,
        f"WITH m AS (INSERT INTO {TABLE} (token) VALUES ({sql.literal(token)}) RETURNING at)"
        f" SELECT extract(epoch FROM (SELECT at FROM m)){_counts_sql(tables)}",
        target,
    )
    at, *counts = row.split("|")
    return Marker(token, float(at), database, dict(zip(tables, map(int, counts), strict=True)))


@dataclass(frozen=True)
class Found:
    """What the restored server holds of the markers."""

    marker_found: bool
    newest_marker_at: float | None  # the newest marker row restored (any drill's)
    counts: dict[str, int]
    probe_found: bool | None  # None: no probe post was looked for
    tokens: tuple[str, ...] = ()  # the newest restored markers' tokens, newest first

    def rpo_seconds(self, marker: Marker) -> float | None:
        """Data lost, as the restore shows it: 0 when this drill's marker came back, else how
        far before it the newest restored marker was (None: no marker at all)."""
        if self.marker_found:
            return 0.0
        if self.newest_marker_at is None:
            return None
        return round(marker.committed_at - self.newest_marker_at, 3)


NOTHING = Found(False, None, {}, None)


def find_marker(
    conn: Connection,
    s: Scratch,
    marker: Marker,
    probe_title: str | None,
    prefix: str,
    counted: bool = True,
) -> Found:
    """The markers, the probe post and (when `counted`) the marker's tables' counts on the
    restored server. A restore to a time before the first drill has no marker table."""
    target = _in(scratch_target(s), marker.database)
    if sql.query(conn, f"SELECT to_regclass('{TABLE}') IS NOT NULL", target) != "t":
        return NOTHING
    tables = list(marker.counts) if counted else []
    probe = (
        f"(SELECT count(*) FROM {prefix}posts WHERE post_title = {sql.literal(probe_title)})"
        if probe_title
        else "NULL"
    )
    row = sql.query(
        conn,
        f"SELECT (SELECT count(*) FROM {TABLE} WHERE token = {sql.literal(marker.token)}),"
        f" (SELECT extract(epoch FROM max(at)) FROM {TABLE}),"
        f" (SELECT string_agg(token, ',' ORDER BY at DESC)"
        f" FROM (SELECT token, at FROM {TABLE} ORDER BY at DESC LIMIT 50) AS newest),"
        f" {probe}{_counts_sql(tables)}",
        target,
    )
    found, newest, tokens, probe_count, *counts = row.split("|")
    return Found(
        marker_found=int(found) == 1,
        newest_marker_at=float(newest) if newest else None,
        counts=dict(zip(tables, map(int, counts), strict=True)),
        probe_found=None if not probe_title else int(probe_count) >= 1,
        tokens=tuple(tokens.split(",")) if tokens else (),
    )


def count_differences(marker: Marker, found: Found) -> list[str]:
    return [
        f"{t}: {n} rows with the marker, {found.counts.get(t)} restored"
        for t, n in marker.counts.items()
        if found.counts.get(t) != n
    ]


def attached_files(conn: Connection, s: Scratch, database: str, prefix: str) -> list[str]:
    """The uploads the restored site references: its attachments' `_wp_attached_file`,
    paths under wp-content/uploads ("2026/11/photo.png")."""
    rows = sql.query(
        conn,
        f"SELECT meta_value FROM {prefix}postmeta WHERE meta_key = '_wp_attached_file' ORDER BY 1",
        _in(scratch_target(s), database),
    )
    return [r for r in rows.splitlines() if r]


def missing_media(stack: str, referenced: list[str], stored: dict[str, int]) -> list[str]:
    """The referenced uploads that have no object (or an empty one) under the stack's media
    prefix in Spaces: what a site restored from this backup would show as broken."""
    missing = []
    for path in referenced:
        try:
            key = layout.media_key(stack, path)
        except ValueError:
            missing.append(f"{path} (not a path under uploads/)")
            continue
        if not stored.get(key):
            missing.append(path)
    return missing


def media_check(ctx: StackContext, conn: Connection, s: Scratch, database: str) -> str:
    """Every upload the restored site references is in the stack's bucket (the media agent
    keeps wp-content/uploads there; a restored stack's web droplets pull them back).
    Raises DrillError naming the first missing ones."""
    spec = ctx.spec
    referenced = attached_files(conn, s, database, spec.wordpress.table_prefix)
    stored = spaces.list_keys(ctx.s3, spec.bucket, layout.media_prefix(spec.name))
    missing = missing_media(spec.name, referenced, stored)
    if missing:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise DrillError(
            f"{len(missing)} of {len(referenced)} uploads the restored site references are "
            f"not in s3://{spec.bucket}/{layout.media_prefix(spec.name)}: {shown} "
            "(`lifeboat recover undelete` brings back deleted ones)"
        )
    return f"{len(referenced)} uploads referenced, all in Spaces"


def amcheck(conn: Connection, s: Scratch, timeout: int = 1800) -> str:
    """pg_amcheck over every database: heap and B-tree structure, and every heap tuple
    found in its indexes (--heapallindexed). The amcheck extension is installed where
    missing (the restored server is a throwaway). Raises naming what it found."""
    cmd = (
        f"cd / && {AS_POSTGRES} {PG_BIN}/pg_amcheck -h {shlex.quote(s.socket_dir)} -p {s.port} "
        "-U postgres --all --heapallindexed --install-missing"
    )
    res = run(conn, cmd + " 2>&1", warn=True, timeout=timeout)
    if not res.ok:  # corruption, or amcheck could not check: either way not proven
        said = res.stdout.strip()[-1500:]
        raise DrillError(f"pg_amcheck on the restore exited {res.exited}: {said}")
    return "no corruption found (all databases, --heapallindexed)"


def checksums(conn: Connection, s: Scratch) -> str:
    """Data checksums on, and no failure counted while the restore ran and was checked."""
    row = sql.query(
        conn,
        "SELECT current_setting('data_checksums'),"
        " coalesce(sum(checksum_failures), 0) FROM pg_stat_database",
        scratch_target(s),
    )
    setting, failures = row.split("|")
    if int(failures):
        raise DrillError(f"the restored server counted {failures} data checksum failures")
    return f"data_checksums {setting}, 0 failures"


# The drill's steps, as Prefect tasks (the flow orders them and reports).


@task(name="marker", cache_policy=NO_CACHE, retries=0)
def mark(ctx: StackContext) -> tuple[Marker, dict | None, str]:
    """The probe post through WordPress (when the stack has a site), then the marker and
    the table counts on the primary, then its WAL segment closed and archived."""
    spec = ctx.spec
    probe = None
    web = ctx.with_role("wordpress")
    if web:
        with ctx.remote.connect(web[0]) as conn:
            probe = site.write_probe(conn, spec, ctx.wordpress_secrets[WORDPRESS_ADMIN])
    with ctx.remote.connect(backup.leader_host(ctx.remote, ctx.hosts)) as conn:
        database, prefix = "postgres", spec.wordpress.table_prefix
        if web:
            database = spec.wordpress.db_name
        tables = counted_tables(conn, database, prefix, sql.LOCAL) if web else []
        marker = write_marker(conn, database, tables)
        segment = wal.verify_archiving(conn, timeout=300)
    return marker, probe, segment


@task(name="scratch_droplet", cache_policy=NO_CACHE, retries=0)
def create_scratch(ctx: StackContext) -> Host:
    return scratch.create(ctx.do, ctx.spec, ctx.public_key)


@task(name="scratch_prepare", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def prepare_scratch(ctx: StackContext, host: Host) -> None:
    """PostgreSQL and the WAL agent (it fetches WAL for the restore), as on a database
    droplet; nothing of Patroni, etcd or HAProxy."""
    with ctx.remote.connect(host) as conn:
        install_packages(conn)
        wal.configure(conn, ctx.spec, ctx.spaces_settings().reveal())


@task(name="restore", cache_policy=NO_CACHE, retries=0)
def restore_backup(
    ctx: StackContext, host: Host, entry: Entry, target: float | None
) -> restore.RestoreTimings:
    (obj,) = entry.manifest["objects"]
    with ctx.remote.connect(host) as conn:
        restore.cleanup(conn, SCRATCH)
        return restore.restore(
            conn, SCRATCH, obj["key"], obj["sha256"], timeout=1800, target_time=target
        )


@task(name="verify", cache_policy=NO_CACHE, retries=0)
def verify(
    ctx: StackContext,
    host: Host,
    marker: Marker,
    probe: dict | None,
    point_in_time: bool = False,
) -> tuple[Found, dict[str, str]]:
    """Every check, each reported; DrillFailed naming every one that failed. To the end of
    the archive: the drill's marker, probe post, the site's rows and every upload it
    references (in Spaces) are there. To a point in time (before the drill began): the
    drill's marker is not."""
    checks: dict[str, str] = {}
    problems: list[str] = []
    prefix = ctx.spec.wordpress.table_prefix
    with ctx.remote.connect(host) as conn:
        if point_in_time:
            found = find_marker(conn, SCRATCH, marker, None, prefix, counted=False)
            checks["marker"] = "absent, as it should be" if not found.marker_found else "FOUND"
            if found.marker_found:
                problems.append(f"marker {marker.token}, written after the target, is restored")
        else:
            title = probe["title"] if probe else None
            found = find_marker(conn, SCRATCH, marker, title, prefix)
            checks["marker"] = "found" if found.marker_found else "MISSING"
            if not found.marker_found:
                problems.append(f"marker {marker.token} committed before the drill is missing")
            if probe:
                checks["probe post"] = "found" if found.probe_found else "MISSING"
                if not found.probe_found:
                    problems.append(f"probe post {probe['title']!r} is not restored")
            differences = count_differences(marker, found)
            checks["site tables"] = (
                f"{len(marker.counts)} tables, rows as with the marker"
                if not differences
                else "; ".join(differences)
            )
            problems += differences
            if probe:  # a site: its uploads are part of what a restore must bring back
                try:
                    checks["media"] = media_check(ctx, conn, SCRATCH, marker.database)
                except DrillError as e:
                    checks["media"] = "MISSING"
                    problems.append(str(e))
        for name, check in (("pg_amcheck", amcheck), ("checksums", checksums)):
            try:
                checks[name] = check(conn, SCRATCH)
            except DrillError as e:
                checks[name] = "FAILED"
                problems.append(str(e))
    if problems:
        raise DrillFailed("; ".join(problems))
    return found, checks


@task(name="scratch_remove", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def remove_scratch(ctx: StackContext) -> list[str]:
    return scratch.remove(ctx.do, ctx.spec)
