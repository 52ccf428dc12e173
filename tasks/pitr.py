"""Point-in-time recovery into a new cluster (`lifeboat recover restore-cluster`).

The new stack's Patroni bootstraps through a custom method (`lifeboat_restore` in
patroni.yml.j2): basebackup.py extracts the source's base backup,
checked against its manifest's SHA-256; PostgreSQL replays the source's archive to the
target time with the strict restore_command and promotes (never pauses). The WAL agent
reads what its own archive lacks from the source's (same system identifier, read only),
and archives the new timeline under the new stack's prefix: the source's archive is never
written to. Patroni then sets this stack's passwords for its own roles (post_bootstrap).

Before anything is created the target is checked against the source's catalog: a time in
the future, before the oldest kept backup finished, or after the newest archived WAL is
refused, saying which times are possible.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from fabric import Connection
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import backup, catalog, layout, spaces, sql
from tasks.restore import pg_time


class RestoreRefused(ValueError):
    """A restore that cannot be done as asked; nothing was created."""


@dataclass(frozen=True)
class RestorePoint:
    """Where a new cluster comes from: the source stack's archive, the backup the target
    time starts from, and the target (epoch seconds)."""

    stack: str  # the source stack: its Spaces prefix
    bucket: str  # the source's bucket
    target: float
    backup_id: str
    key: str  # the base backup object
    sha256: str
    system_id: str

    @property
    def target_time(self) -> str:
        """As PostgreSQL's recovery_target_time reads it."""
        return pg_time(self.target)


def plan(
    s3: Any,  # noqa: ANN401 - a boto3 client
    stack: str,
    source: str,
    bucket: str,
    target: float,
    now: float,
) -> RestorePoint:
    """The restore point for `target` in the source's archive, or RestoreRefused saying
    why and which times are possible."""
    if source == stack:
        raise RestoreRefused(
            f"restore-cluster builds a new stack from {source}'s backups: give the new "
            "stack a name of its own in --spec (its droplets and Spaces prefix are new)"
        )
    entries, problems = backup.read_catalog(s3, bucket, source)
    if not entries:
        detail = f" ({'; '.join(problems)})" if problems else ""
        raise RestoreRefused(
            f"no backup of stack {source} in bucket {bucket}{detail}: check --from and "
            "--from-bucket; nothing was created"
        )
    stored = backup.wal_stored_at(s3, bucket, source)
    try:
        chosen = catalog.backup_for_time([e.backup for e in entries], target, stored, now)
    except catalog.TargetTimeRefused as e:
        raise RestoreRefused(f"{e}; nothing was created") from None
    entry = next(e for e in entries if e.backup.id == chosen.id)
    (obj,) = entry.manifest["objects"]
    return RestorePoint(
        stack=source,
        bucket=bucket,
        target=target,
        backup_id=chosen.id,
        key=obj["key"],
        sha256=obj["sha256"],
        system_id=chosen.system_id,
    )


def copy_media(s3: Any, point: RestorePoint, bucket: str, stack: str) -> dict[str, int]:  # noqa: ANN401
    """The source's uploads copied (server side) under the new stack's prefix, where its
    web droplets' media agents read them; what is there already with the same size is
    left. Uploads are not versioned with the database: the newest copy of each is taken
    (a file deleted after the target time is gone from the source too)."""
    src = layout.media_prefix(point.stack)
    dst = layout.media_prefix(stack)
    have = spaces.list_keys(s3, bucket, dst)
    copied = kept = 0
    for key, size in spaces.list_keys(s3, point.bucket, src).items():
        to = dst + key.removeprefix(src)
        if have.get(to) == size:
            kept += 1
            continue
        s3.copy_object(Bucket=bucket, Key=to, CopySource={"Bucket": point.bucket, "Key": key})
        copied += 1
    return {"copied": copied, "kept": kept}


_STOP = re.compile(r"^(\d+)\s+([0-9A-F]+/[0-9A-F]+)\s+(.*)$")


def stopped_at(conn: Connection, point: RestorePoint) -> dict[str, str]:
    """On the new leader: the timeline it runs, and where the restore's recovery stopped,
    from that timeline's history file (it lists every switch point before it, so later
    failovers do not hide the restore's). A recovery that ended anywhere but at a target
    (the end of the archive, say) raises RestoreRefused."""
    timeline = int(sql.query(conn, "SELECT timeline_id FROM pg_control_checkpoint()"))
    history = f"pg_wal/{timeline:08X}.history"
    text = sql.query(conn, f"SELECT pg_read_file({sql.literal(history)})")
    lines = [m.groups() for line in text.splitlines() if (m := _STOP.match(line.strip()))]
    targets = [g for g in lines if g[2].startswith(("before ", "after "))]
    if not targets:
        last = f"{lines[-1][1]} ({lines[-1][2]!r})" if lines else "nowhere: no history"
        raise RestoreRefused(
            f"recovery on {conn.host} stopped at {last}, not at the target {point.target_time}"
        )
    parent, lsn, reason = targets[-1]
    return {
        "timeline": str(timeline),
        "branched from": f"timeline {parent} at {lsn}",
        "stop": reason,
    }


# --- Prefect tasks -------------------------------------------------------------------------


# The plain functions as tasks: one signature each, no wrapper to keep in step.
plan_task = task(name="restore_point", cache_policy=NO_CACHE, retries=0)(plan)
copy_media_task = task(name="copy_media", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)(
    copy_media
)
