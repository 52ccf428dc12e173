"""backup: a base backup of the stack's cluster to Spaces, cataloged with its manifest,
then retention; ends by checking that the archive holds every WAL segment from the
backup's start to the current one. One backup per stack at a time (a Prefect global
concurrency limit): a second waits up to `wait_seconds`, then is refused.

backup_health: fails loudly when the archive lags or the newest backup is older than the
schedule allows."""

from __future__ import annotations

import time

from botocore.exceptions import BotoCoreError, ClientError
from cronsim import CronSim
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency

from blocks.credentials import SpacesCredentials
from blocks.stack import StackSpec
from flows import remote as rm
from flows.remote import Remote
from tasks import backup as bk
from tasks import patroni, wal
from tasks.hosts import Host
from tasks.spaces import s3_client

step = task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
check = task(cache_policy=NO_CACHE, retries=0)


class BackupRefused(RuntimeError):
    pass


def limit_name(spec: StackSpec) -> str:
    return f"lifeboat-backup-{spec.name}"


def _members(remote: Remote, hosts: list[Host]) -> list[patroni.Member]:
    for host in (h for h in hosts if "postgres" in h.roles):
        try:
            with remote.connect(host) as conn:
                # Live lag: /cluster's DCS positions are up to a loop_wait old, and a
                # backup follows bursts of WAL (pgbench, the previous backup's switch).
                members = patroni.with_live_lag(conn, patroni.cluster(conn, host.private_ip))
            if members:
                return members
        except Exception:  # noqa: BLE001, S112 - ask the next member
            continue
    raise bk.BackupError("no database droplet answered with Patroni's cluster view")


def _leader_host(remote: Remote, hosts: list[Host]) -> Host:
    """The droplet of the current Patroni leader."""
    leader = next(m for m in _members(remote, hosts) if m.is_leader)
    return next(h for h in hosts if h.name == leader.name)


@check
def pick_source(remote: Remote, hosts: list[Host]) -> tuple[str, str]:
    name, why = bk.choose_source(_members(remote, hosts))
    log = get_run_logger()
    (log.warning if "primary" in why else log.info)("backing up from %s: %s", name, why)
    return name, why


@step
def clear_leftovers(spec: StackSpec, credentials: str) -> list[str]:
    s3 = s3_client(SpacesCredentials.load(credentials))
    return bk.clear_leftovers(s3, spec.bucket, spec.name)


# No retry: a cut-off backup leaves nothing cataloged; the next run starts afresh.
@check
def take(remote: Remote, hosts: list[Host], source: Host) -> dict:
    leader = _leader_host(remote, hosts)
    if leader.name != source.name:
        with remote.connect(leader) as conn:
            bk.checkpoint(conn)
    with remote.connect(source) as conn:
        return bk.take(conn, bk.new_id())


@step
def record(spec: StackSpec, credentials: str, facts: dict, source: str, why: str) -> dict:
    s3 = s3_client(SpacesCredentials.load(credentials))
    manifest = bk.write_manifest(s3, spec.bucket, spec.name, facts, source=source, source_why=why)
    entries, _ = bk.read_catalog(s3, spec.bucket, spec.name)
    if manifest["id"] not in {e.backup.id for e in entries}:
        raise bk.BackupError(f"backup {manifest['id']} was written but is not in the catalog")
    return manifest


@check
def verify_wal(
    spec: StackSpec, credentials: str, remote: Remote, hosts: list[Host], manifest: dict
) -> dict:
    """On the primary: close the current segment and wait for it to be archived; then
    every segment from the backup's start to it must be in the archive."""
    with remote.connect(_leader_host(remote, hosts)) as conn:
        last = wal.verify_archiving(conn, timeout=300)
    s3 = s3_client(SpacesCredentials.load(credentials))
    needed, missing = bk.wal_gaps(s3, spec.bucket, spec.name, manifest, last)
    if missing:
        raise bk.BackupError(
            f"backup {manifest['id']}: {len(missing)} of {len(needed)} WAL segments from its "
            f"start to {last} are not in the archive: {', '.join(missing[:10])}"
        )
    return {"first": needed[0], "last": needed[-1], "segments": len(needed)}


@step
def retention(spec: StackSpec, credentials: str) -> dict:
    s3 = s3_client(SpacesCredentials.load(credentials))
    return bk.apply_retention(
        s3, spec.bucket, spec.name, spec.backup.retention_count, spec.backup.retention_days
    )


def _busy(spec: StackSpec) -> bool:
    """Creates the stack's limit (one slot) if needed; whether a backup holds it now."""
    name = limit_name(spec)
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, 1)
        return client.read_global_concurrency_limit_by_name(name).active_slots > 0


def _refused(spec: StackSpec, wait_seconds: float) -> BackupRefused:
    waited = f"waited {wait_seconds:.0f} s and " if wait_seconds > 0 else ""
    return BackupRefused(
        f"another backup of stack {spec.name} is running (Prefect concurrency limit "
        f"{limit_name(spec)}): this one {waited}is refused; run it again later, or with "
        "--wait SECONDS to queue behind it"
    )


@flow(name="backup")
def backup(spec: StackSpec, credentials: str = "lab", wait_seconds: float = 0) -> dict:
    log = get_run_logger()
    hosts, remote = rm.load(spec, credentials)
    if _busy(spec):
        if wait_seconds <= 0:
            raise _refused(spec, wait_seconds)
        log.info("another backup of stack %s is running: waiting up to %.0f s", spec.name,
                 wait_seconds)  # fmt: skip
    try:
        # A free slot is taken at once; 5 s covers the API round trips.
        with concurrency(limit_name(spec), occupy=1, timeout_seconds=max(wait_seconds, 5)):
            return _backup(spec, credentials, hosts, remote)
    except TimeoutError:
        raise _refused(spec, wait_seconds) from None
    finally:
        rm.save_pins(credentials, remote)


def _backup(spec: StackSpec, credentials: str, hosts: list[Host], remote: Remote) -> dict:
    source_name, why = pick_source(remote, hosts)
    source = next(h for h in hosts if h.name == source_name)
    leftovers = clear_leftovers(spec, credentials)
    facts = take(remote, hosts, source)
    manifest = record(spec, credentials, facts, source_name, why)
    wal_range = verify_wal(spec, credentials, remote, hosts, manifest)
    kept = retention(spec, credentials)
    seconds = manifest["stopped_at"] - manifest["started_at"]
    report = {
        "id": manifest["id"],
        "source": f"{source_name} ({why})",
        "system_identifier": manifest["system_identifier"],
        "timeline": manifest["timeline"],
        "start_lsn": manifest["start_lsn"],
        "stop_lsn": manifest["stop_lsn"],
        "database_bytes": manifest["raw_bytes"],
        "stored_bytes": manifest["stored_bytes"],
        "seconds": round(seconds, 1),
        "throughput_mb_s": round(manifest["raw_bytes"] / max(seconds, 1e-3) / 1e6, 1),
        "wal_needed": f"{manifest['wal_start']} .. {manifest['wal_stop']}",
        "wal_verified": f"{wal_range['first']} .. {wal_range['last']} "
        f"({wal_range['segments']} segments, no gap)",
        "retention": f"kept {len(kept['kept'])}, expired {kept['expired'] or 'none'}, "
        f"{kept['wal_deleted']} WAL files deleted",
        "leftovers_removed": len(leftovers),
    }
    create_table_artifact(
        table=[{"field": k, "value": str(v)} for k, v in report.items()],
        key=f"backup-{spec.name}",
        description=f"Base backup {manifest['id']} of stack {spec.name}",
    )
    get_run_logger().info(
        "backup %s of %s: %.0f MB stored in %.1f s, WAL %s verified",
        manifest["id"], spec.name, manifest["stored_bytes"] / 1e6, seconds, report["wal_verified"],
    )  # fmt: skip
    return report


def first_backup_needed(spec: StackSpec, credentials: str) -> bool:
    """Whether the catalog lacks a backup of the running cluster (by system identifier):
    `up` takes one then, and only then, so a rerun of `up` adds none."""
    hosts, remote = rm.load(spec, credentials)
    try:
        with remote.connect(_leader_host(remote, hosts)) as conn:
            system_id = bk.system_identifier(conn)
    finally:
        rm.save_pins(credentials, remote)
    entries, _ = bk.read_catalog(
        s3_client(SpacesCredentials.load(credentials)), spec.bucket, spec.name
    )
    return not any(e.backup.system_id == system_id for e in entries)


def schedule_period(schedule: str, now: float) -> float:
    """Seconds between two consecutive runs of a cron schedule (the longest gap in the
    next week, for schedules with uneven gaps)."""
    import datetime as dt

    it = CronSim(schedule, dt.datetime.fromtimestamp(now, dt.UTC))
    fires = [next(it) for _ in range(8)]
    return max((b - a).total_seconds() for a, b in zip(fires, fires[1:], strict=False))


@flow(name="backup-health")
def backup_health(
    spec: StackSpec, credentials: str = "lab", max_archive_age: float | None = None
) -> dict:
    """Fails, naming every problem, when: the primary's archiver has failures newer than
    its last success, WAL waits to be archived longer than `max_archive_age` (default 3 x
    archive_timeout + 60 s), or the newest backup is older than one schedule period plus
    an hour (or there is none)."""
    hosts, remote = rm.load(spec, credentials, complete=False)
    limit = max_archive_age or 3 * spec.backup.archive_timeout + 60
    problems = []
    leader = _leader_host(remote, hosts)
    with remote.connect(leader) as conn:
        arch = bk.archiver(conn)
    age = arch["last_archived_age_s"]
    if age is None or (age > limit and arch["ready"] > 0):
        problems.append(
            f"archive lags on {leader.name}: last archived {age} s ago, "
            f"{arch['ready']} segments waiting (limit {limit:.0f} s)"
        )
    if arch["last_failed_age_s"] is not None and (age is None or arch["last_failed_age_s"] < age):
        problems.append(f"archiving fails on {leader.name}: last failure {arch['last_failed_wal']}")
    s3 = s3_client(SpacesCredentials.load(credentials), retries={"max_attempts": 1})
    try:
        entries, catalog_problems = bk.read_catalog(s3, spec.bucket, spec.name)
    except (BotoCoreError, ClientError) as exc:
        entries, catalog_problems = None, [f"the backup catalog cannot be read: {exc}"]
    problems += catalog_problems
    now = time.time()
    allowed = schedule_period(spec.backup.schedule, now) + 3600
    newest = entries[-1].backup if entries else None
    backup_age = None if newest is None else now - newest.stopped_at
    if entries is not None and (backup_age is None or backup_age > allowed):
        problems.append(
            "no base backup in the catalog"
            if newest is None
            else f"newest backup {newest.id} is {backup_age / 3600:.1f} h old "
            f"(schedule {spec.backup.schedule!r} allows {allowed / 3600:.1f} h)"
        )
    rm.save_pins(credentials, remote)
    result = {
        "archiver": arch,
        "newest_backup": newest.id if newest else None,
        "newest_backup_age_s": None if backup_age is None else round(backup_age),
        "problems": problems,
    }
    if problems:
        raise bk.BackupError(f"stack {spec.name} backups unhealthy: " + "; ".join(problems))
    return result
