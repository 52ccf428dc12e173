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

from fabric import Connection

from tasks import sql
from tasks.hosts import run
from tasks.restore import AS_POSTGRES, PG_BIN, Scratch, scratch_target

TABLE = "lifeboat_drill_marker"
_IDENT = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class DrillError(RuntimeError):
    pass


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
