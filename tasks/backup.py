"""Base backups and the catalog in Spaces: the source chosen from Patroni's view, the
droplet's basebackup.py run over SSH, the manifest written last, WAL gap checks and
retention. The pure rules are in tasks/catalog.py."""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import zstandard
from botocore.exceptions import BotoCoreError, ClientError
from fabric import Connection
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks import catalog, layout, patroni, sql, wal
from tasks.catalog import Backup
from tasks.hosts import Host, run
from tasks.patroni import Member
from tasks.render import DESTINATIONS
from tasks.spaces import list_keys

if TYPE_CHECKING:
    from tasks.context import Remote, StackContext

PROGRAM = DESTINATIONS["wal/basebackup.py"][0]
# A replica this far behind (bytes) is not a good source: its backup would start old.
MAX_SOURCE_LAG = 16 << 20


class BackupError(RuntimeError):
    pass


def new_id(now: float | None = None) -> str:
    """Sortable, unique per stack at one-second resolution (one backup at a time)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))


def choose_source(members: list[Member]) -> tuple[str, str]:
    """(member name, why). A streaming replica, preferring one that is not the synchronous
    standby (a backup's reads slow down the commits that wait for it), then the least lag;
    the primary only when no replica is healthy."""
    leader = next((m for m in members if m.is_leader), None)
    replicas = [
        m
        for m in members
        if not m.is_leader
        and m.state == "streaming"
        and m.lag is not None
        and m.lag <= MAX_SOURCE_LAG
        and (leader is None or m.timeline == leader.timeline)
    ]
    if replicas:
        best = min(replicas, key=lambda m: (m.role == "sync_standby", m.lag))
        return best.name, f"healthy replica ({best.role}, lag {best.lag} B)"
    if leader is None or leader.state != "running":
        raise BackupError("no healthy replica and no running primary: nothing to back up from")
    return leader.name, "no healthy replica: backing up from the primary"


def run_program(
    conn: Connection, args: str, what: str, timeout: float, error: type[Exception] = BackupError
) -> dict[str, Any]:
    """basebackup.py as postgres on the droplet (`args` already quoted); its one-line JSON
    answer, or `error` with the program's one-line reason."""
    res = run(
        conn,
        f"runuser -u postgres -- /usr/bin/python3 {PROGRAM} {args}",
        warn=True,
        timeout=timeout,
    )
    if not res.ok:
        raise error(f"{what} on {conn.host} failed: {res.stderr.strip()[-500:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def take(conn: Connection, backup_id: str, timeout: float = 6 * 3600) -> dict[str, Any]:
    """A base backup of the droplet's server; its JSON facts."""
    return run_program(conn, f"take --id {shlex.quote(backup_id)}", "base backup", timeout)


def checkpoint(conn: Connection) -> None:
    """A checkpoint on the primary: a replica can only restart (and so start a backup)
    at a checkpoint it has replayed; without a fresh one its backup starts at the last
    timed checkpoint, up to checkpoint_timeout of WAL earlier."""
    sql.psql(conn, "CHECKPOINT", timeout=600)


def system_identifier(conn: Connection) -> str:
    return sql.query(conn, "SELECT system_identifier FROM pg_control_system()")


def wal_stored_at(s3: Any, bucket: str, stack: str) -> dict[str, float]:
    """system id -> when its newest archived WAL segment was stored (epoch seconds): no
    commit after that time is in the archive yet."""
    out: dict[str, float] = {}
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=layout.stack_prefix(stack)
    )
    for page in pages:
        for obj in page.get("Contents", []):
            found = layout.parse_wal(stack, obj["Key"])
            if found is None or catalog.SEGMENT.match(found[1]) is None or ".div" in found[1]:
                continue  # not a segment, or a replaced timeline's other version
            system_id, stored = found[0], obj["LastModified"].timestamp()
            out[system_id] = max(out.get(system_id, 0.0), stored)
    return out


@dataclass(frozen=True)
class Entry:
    backup: Backup
    manifest: dict[str, Any]


def read_catalog(
    s3: Any, bucket: str, stack: str, keys: dict[str, int] | None = None
) -> tuple[list[Entry], list[str]]:
    """(cataloged backups oldest first, problems). A manifest whose objects are not all
    stored at their recorded sizes is a problem, not a backup; so is a manifest that
    cannot be read or parsed: it is skipped and named, so one bad object stops neither
    backups nor retention (backup-health fails on it). `keys`: a listing of the stack's
    prefix the caller already has."""
    keys = list_keys(s3, bucket, layout.stack_prefix(stack)) if keys is None else keys
    entries, problems = [], []
    for key in catalog.manifests(keys, stack):
        try:
            manifest = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            absent = [o["key"] for o in manifest["objects"] if keys.get(o["key"]) != o["bytes"]]
            backup = Backup.from_manifest(manifest, key)
        except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
            problems.append(f"manifest {key} is unreadable ({type(exc).__name__}): skipped")
            continue
        if absent:
            problems.append(f"backup {manifest['id']}: objects missing or short: {absent}")
            continue
        entries.append(Entry(backup, manifest))
    entries.sort(key=lambda e: e.backup.stopped_at)
    return entries, problems


def write_manifest(s3: Any, bucket: str, stack: str, facts: dict[str, Any], **extra: Any) -> dict:
    """The manifest, written only after every object it lists is confirmed stored at its
    size: from then on the backup is in the catalog."""
    for obj in facts["objects"]:
        head = s3.head_object(Bucket=bucket, Key=obj["key"])
        if head["ContentLength"] != obj["bytes"]:
            raise BackupError(
                f"{obj['key']}: stored {head['ContentLength']} bytes, the backup sent "
                f"{obj['bytes']}: not cataloged"
            )
    size = facts["wal_segment_size"]
    manifest = {
        **facts,
        "stack": stack,
        "wal_start": catalog.segment_name(
            facts["timeline"], catalog.lsn(facts["start_lsn"]) // size, size
        ),
        "wal_stop": catalog.segment_name(
            facts["timeline"], catalog.lsn(facts["stop_lsn"]) // size, size
        ),
        "stored_bytes": sum(o["bytes"] for o in facts["objects"]),
        "raw_bytes": sum(o["raw_bytes"] for o in facts["objects"]),
        **extra,
    }
    key = layout.manifest_key(stack, facts["system_identifier"], facts["id"])
    s3.put_object(
        Bucket=bucket,
        Key=key,
        Body=json.dumps(manifest, indent=1).encode(),
        ContentType="application/json",
    )
    return manifest


def clear_leftovers(s3: Any, bucket: str, stack: str) -> list[str]:
    """What a cut-off run left under backups/: multipart uploads never completed (invisible
    but billed; the bucket's lifecycle rule would abort them only a day later) and objects
    of a backup whose manifest was never written. Called at the start of a backup, when
    the stack's concurrency limit guarantees that no other backup is running."""
    removed = []
    pages = s3.get_paginator("list_multipart_uploads").paginate(
        Bucket=bucket, Prefix=layout.stack_prefix(stack)
    )
    for page in pages:
        for upload in page.get("Uploads", []):
            if layout.backup_area(stack, upload["Key"]):
                s3.abort_multipart_upload(
                    Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
                removed.append(upload["Key"])
    orphans = catalog.orphans(list_keys(s3, bucket, layout.stack_prefix(stack)), stack)
    delete_keys(s3, bucket, orphans)
    return removed + orphans


def wal_names(keys: dict[str, int], stack: str) -> dict[str, list[str]]:
    """system id -> archived WAL file names, from a listing of the stack's prefix."""
    return catalog.wal_names(keys, stack)


def history(s3: Any, bucket: str, stack: str, system_id: str, timeline: int) -> str:
    """Timeline `timeline`'s history file from the archive ('' for timeline 1)."""
    if timeline == 1:
        return ""
    key = layout.wal_key(stack, system_id, catalog.history_name(timeline))
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        raise BackupError(f"timeline {timeline}'s history file {key} is not archived") from exc
    return zstandard.ZstdDecompressor().decompress(body, max_output_size=1 << 20).decode()


def wal_gaps(
    s3: Any, bucket: str, stack: str, manifest: dict[str, Any], last_segment: str
) -> tuple[list[str], list[str]]:
    """(needed, missing): the segments from the backup's start to `last_segment` (the
    current one, on the current timeline) that recovery would read, and which of those
    the archive lacks."""
    system_id = manifest["system_identifier"]
    size = manifest["wal_segment_size"]
    timeline, last = catalog.parse_segment(last_segment, size) or (0, 0)
    text = history(s3, bucket, stack, system_id, timeline)
    needed = catalog.needed_segments(
        catalog.lsn(manifest["start_lsn"]), last * size, timeline, catalog.parse_history(text), size
    )
    listing = list_keys(s3, bucket, layout.wal_prefix(stack, system_id))
    archived = set(wal_names(listing, stack).get(system_id, []))
    return needed, catalog.missing(needed, archived)


def delete_keys(s3: Any, bucket: str, keys: list[str]) -> int:
    for i in range(0, len(keys), 1000):
        batch = [{"Key": k} for k in keys[i : i + 1000]]
        reply = s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        if reply.get("Errors"):
            first = reply["Errors"][0]
            raise BackupError(f"deleting {first['Key']}: {first.get('Message', first['Code'])}")
    return len(keys)


def apply_retention(
    s3: Any, bucket: str, stack: str, keep_count: int, keep_days: int, now: float | None = None
) -> dict[str, Any]:
    """Deletes expired backups (manifest first, so the catalog never lists a backup whose
    objects are going) and the WAL no kept backup needs."""
    keys = list_keys(s3, bucket, layout.stack_prefix(stack))  # one listing for backups and WAL
    entries, _ = read_catalog(s3, bucket, stack, keys)
    backups = [e.backup for e in entries]
    kept, expired = catalog.retention(backups, now or time.time(), keep_count, keep_days)
    for backup in expired:
        manifest = [k for k in backup.keys if layout.is_manifest(stack, k)]
        delete_keys(s3, bucket, manifest)
        delete_keys(s3, bucket, [k for k in backup.keys if k not in manifest])
    wal = wal_names(keys, stack)  # deleting backups removed no WAL keys
    doomed = catalog.expired_wal(wal, kept, {b.system_id for b in backups})
    deleted_wal = 0
    for system_id, names in doomed.items():
        keys = [layout.wal_key(stack, system_id, name) for name in names]
        deleted_wal += delete_keys(s3, bucket, keys)
    return {
        "kept": [b.id for b in kept],
        "expired": [b.id for b in expired],
        "wal_deleted": deleted_wal,
    }


def archiver(conn: Connection) -> dict[str, Any]:
    """pg_stat_archiver and the WAL waiting in archive_status on one database droplet."""
    row = sql.query(
        conn,
        "SELECT archived_count, failed_count, coalesce(last_archived_wal, ''),"
        " coalesce(extract(epoch FROM now() - last_archived_time)::int, -1),"
        " coalesce(last_failed_wal, ''),"
        " coalesce(extract(epoch FROM now() - last_failed_time)::int, -1), pg_is_in_recovery(),"
        " current_setting('data_directory') FROM pg_stat_archiver",
    ).split("|")
    ready = run(
        conn,
        f"ls {shlex.quote(row[7])}/pg_wal/archive_status | grep -c '\\.ready$'",
        warn=True,
        timeout=30,
    ).stdout.strip()
    return {
        "archived_count": int(row[0]),
        "failed_count": int(row[1]),
        "last_archived_wal": row[2] or None,
        "last_archived_age_s": None if row[3] == "-1" else int(row[3]),
        "last_failed_wal": row[4] or None,
        "last_failed_age_s": None if row[5] == "-1" else int(row[5]),
        "in_recovery": row[6] == "t",
        "ready": int(ready or 0),
    }


# --- Prefect tasks -------------------------------------------------------------------------


def members(remote: Remote, hosts: list[Host], live_lag: bool = False) -> list[Member]:
    """Patroni's view of the cluster, from the first database droplet that answers; with
    `live_lag`, each replica's lag read live (one more REST call per member)."""
    for host in (h for h in hosts if "postgres" in h.roles):
        try:
            with remote.connect(host) as conn:
                found = patroni.cluster(conn, host.private_ip)
                if live_lag:
                    found = patroni.with_live_lag(conn, found)
            if found:
                return found
        except Exception:  # noqa: BLE001, S112 - ask the next member
            continue
    raise BackupError("no database droplet answered with Patroni's cluster view")


def leader_host(remote: Remote, hosts: list[Host]) -> Host:
    """The droplet of the current Patroni leader."""
    leader = next(m for m in members(remote, hosts) if m.is_leader)
    return next(h for h in hosts if h.name == leader.name)


@task(name="pick_source", cache_policy=NO_CACHE, retries=0)
def pick_source(remote: Remote, hosts: list[Host]) -> tuple[str, str]:
    # Live lag: /cluster's DCS positions are up to a loop_wait old, and a backup
    # follows bursts of WAL (pgbench, the previous backup's switch).
    name, why = choose_source(members(remote, hosts, live_lag=True))
    log = get_run_logger()
    (log.warning if "primary" in why else log.info)("backing up from %s: %s", name, why)
    return name, why


@task(name="clear_leftovers", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def clear_leftovers_task(stack: StackContext) -> list[str]:
    return clear_leftovers(stack.s3, stack.spec.bucket, stack.spec.name)


# No retry: a cut-off backup leaves nothing cataloged; the next run starts afresh.
@task(name="take", cache_policy=NO_CACHE, retries=0)
def take_task(remote: Remote, hosts: list[Host], source: Host) -> dict:
    leader = leader_host(remote, hosts)
    if leader.name != source.name:
        with remote.connect(leader) as conn:
            checkpoint(conn)
    with remote.connect(source) as conn:
        return take(conn, new_id())


@task(name="record", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def record(stack: StackContext, facts: dict, source: str, why: str) -> dict:
    s3, spec = stack.s3, stack.spec
    manifest = write_manifest(s3, spec.bucket, spec.name, facts, source=source, source_why=why)
    entries, _ = read_catalog(s3, spec.bucket, spec.name)
    if manifest["id"] not in {e.backup.id for e in entries}:
        raise BackupError(f"backup {manifest['id']} was written but is not in the catalog")
    return manifest


@task(name="verify_wal", cache_policy=NO_CACHE, retries=0)
def verify_wal(stack: StackContext, manifest: dict) -> dict:
    """On the primary: close the current segment and wait for it to be archived; then
    every segment from the backup's start to it must be in the archive."""
    with stack.remote.connect(leader_host(stack.remote, stack.hosts)) as conn:
        last = wal.verify_archiving(conn, timeout=300)
    needed, missing = wal_gaps(stack.s3, stack.spec.bucket, stack.spec.name, manifest, last)
    if missing:
        raise BackupError(
            f"backup {manifest['id']}: {len(missing)} of {len(needed)} WAL segments from its "
            f"start to {last} are not in the archive: {', '.join(missing[:10])}"
        )
    return {"first": needed[0], "last": needed[-1], "segments": len(needed)}


@task(name="retention", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def retention(stack: StackContext) -> dict:
    spec = stack.spec
    return apply_retention(
        stack.s3, spec.bucket, spec.name, spec.backup.retention_count, spec.backup.retention_days
    )


@task(name="first_backup_needed", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def first_backup_needed(stack: StackContext) -> bool:
    """Whether the catalog lacks a backup of the running cluster (by system identifier):
    `up` takes one then, and only then, so a rerun of `up` adds none."""
    with stack.remote.connect(leader_host(stack.remote, stack.hosts)) as conn:
        system_id = system_identifier(conn)
    entries, _ = read_catalog(stack.s3, stack.spec.bucket, stack.spec.name)
    return not any(e.backup.system_id == system_id for e in entries)


@task(name="archiver_state", cache_policy=NO_CACHE, retries=0)
def archiver_state(remote: Remote, hosts: list[Host]) -> tuple[str, dict[str, Any]]:
    """The leader's name and its pg_stat_archiver (see `archiver`)."""
    leader = leader_host(remote, hosts)
    with remote.connect(leader) as conn:
        return leader.name, archiver(conn)


@task(name="catalog_state", cache_policy=NO_CACHE, retries=0)
def catalog_state(stack: StackContext) -> tuple[list[Entry] | None, list[str]]:
    """The catalog's entries and problems; None and the reason when it cannot be read (one
    attempt: a health check reports Spaces away rather than waiting it out)."""
    s3 = stack.s3_with(retries={"max_attempts": 1})
    spec = stack.spec
    try:
        keys = list_keys(s3, spec.bucket, layout.stack_prefix(spec.name))
        entries, problems = read_catalog(s3, spec.bucket, spec.name, keys)
        problems += continuity_problems(s3, spec.bucket, spec.name, entries, keys)
    except (BotoCoreError, ClientError) as exc:
        return None, [f"the backup catalog cannot be read: {exc}"]
    return entries, problems


def continuity_problems(
    s3: Any, bucket: str, stack: str, entries: list[Entry], keys: dict[str, int]
) -> list[str]:
    """Holes in the archive: for each cluster (system id) with backups, the WAL from each
    backup's start to the newest archived segment, following the newest timeline's
    history. A hole is named with the backups whose point-in-time range it cuts."""
    problems = []
    archived_by_system = wal_names(keys, stack)
    systems = sorted({e.backup.system_id for e in entries})
    for system_id in systems:
        mine = [e.backup for e in entries if e.backup.system_id == system_id]
        size = mine[0].segment_size
        archived = set(archived_by_system.get(system_id, []))
        segments = [
            parsed
            for name in archived
            if "." not in name and (parsed := catalog.parse_segment(name, size)) is not None
        ]
        if not segments:
            problems.append(f"cluster {system_id}: no WAL segment archived")
            continue
        timeline, last = max(segments)
        try:
            text = history(s3, bucket, stack, system_id, timeline)
        except BackupError as exc:  # the newest timeline's history is not archived
            problems.append(f"cluster {system_id}: {exc}")
            continue
        hole = catalog.first_hole(mine, archived, timeline, catalog.parse_history(text), last)
        if hole is not None:
            missing, cut = hole
            more = f" and {len(missing) - 1} more to {missing[-1]}" if len(missing) > 1 else ""
            problems.append(
                f"archive hole: WAL {missing[0]}{more} missing (cluster {system_id}); "
                f"backups {', '.join(b.id for b in cut)} restore only to before it"
            )
    return problems
