"""backup: a base backup of the stack's cluster to Spaces, cataloged with its manifest,
then retention; ends by checking that the archive holds every WAL segment from the
backup's start to the current one. One backup per stack at a time (a Prefect global
concurrency limit): a second waits up to `wait_seconds`, then is refused.

backup_health: fails loudly when the archive lags or the newest backup is older than the
schedule allows."""

from __future__ import annotations

import time

from cronsim import CronSim
from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency

from blocks.stack import StackSpec
from flows.report import Progress
from tasks import backup as bk
from tasks import events
from tasks.context import StackContext, opened


class BackupRefused(RuntimeError):
    pass


def limit_name(spec: StackSpec) -> str:
    return spec.backup_limit_name


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
def backup(
    spec: StackSpec,
    credentials: str = "lab",
    wait_seconds: float = 0,
    stack: StackContext | None = None,
) -> dict:
    """`stack`: the context of a parent flow (`up`); without it, one is opened here."""
    log = get_run_logger()
    with opened(spec, credentials, stack) as ctx:
        # One healthy source is enough: a web droplet down never stops a backup.
        ctx.require_role("postgres")
        if _busy(spec):
            if wait_seconds <= 0:
                raise _refused(spec, wait_seconds)
            log.info(
                "another backup of stack %s is running: waiting up to %.0f s",
                spec.name,
                wait_seconds,
            )
        try:
            # A free slot is taken at once; 5 s covers the API round trips.
            with concurrency(limit_name(spec), occupy=1, timeout_seconds=max(wait_seconds, 5)):
                report = _backup(ctx)
            events.backup_succeeded(spec, report)
            return report
        except TimeoutError:
            raise _refused(spec, wait_seconds) from None


BACKUP_STEPS = ["source", "base backup to Spaces", "catalog and WAL verified", "retention"]


def _backup(ctx: StackContext) -> dict:
    spec = ctx.spec
    progress = Progress(f"backup of {spec.name}", BACKUP_STEPS)
    progress.step("source")
    source_name, why = bk.pick_source(ctx.remote, ctx.hosts)
    leftovers = bk.clear_leftovers_task(ctx)
    progress.step("base backup to Spaces")
    facts = bk.take_task(ctx.remote, ctx.hosts, ctx.host(source_name))
    progress.step("catalog and WAL verified")
    manifest = bk.record(ctx, facts, source_name, why)
    wal_range = bk.verify_wal(ctx, manifest)
    progress.step("retention")
    kept = bk.retention(ctx)
    progress.done()
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
        manifest["id"],
        spec.name,
        manifest["stored_bytes"] / 1e6,
        seconds,
        report["wal_verified"],
    )
    return report


def schedule_period(schedule: str, now: float) -> float:
    """Seconds between two consecutive runs of a cron schedule (the longest gap in the
    next week, for schedules with uneven gaps)."""
    import datetime as dt

    it = CronSim(schedule, dt.datetime.fromtimestamp(now, dt.UTC))
    fires = [next(it) for _ in range(8)]
    return max((b - a).total_seconds() for a, b in zip(fires, fires[1:], strict=False))


@flow(name="backup-health")
def backup_health(
    spec: StackSpec,
    credentials: str = "lab",
    max_archive_age: float | None = None,
    stack: StackContext | None = None,
) -> dict:
    """Fails, naming every problem, when: the primary's archiver has failures newer than
    its last success, WAL waits to be archived longer than `max_archive_age` (default 3 x
    archive_timeout + 60 s), or the newest backup is older than one schedule period plus
    an hour (or there is none)."""
    limit = max_archive_age or 3 * spec.backup.archive_timeout + 60
    with opened(spec, credentials, stack) as ctx:
        leader, arch = bk.archiver_state(ctx.remote, ctx.hosts)
        entries, problems = bk.catalog_state(ctx)
    problems = _archive_problems(leader, arch, limit) + problems
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
    result = {
        "archiver": arch,
        "newest_backup": newest.id if newest else None,
        "newest_backup_age_s": None if backup_age is None else round(backup_age),
        "problems": problems,
    }
    if problems:
        raise bk.BackupError(f"stack {spec.name} backups unhealthy: " + "; ".join(problems))
    return result


def _archive_problems(leader: str, arch: dict, limit: float) -> list[str]:
    problems = []
    age = arch["last_archived_age_s"]
    if age is None or (age > limit and arch["ready"] > 0):
        problems.append(
            f"archive lags on {leader}: last archived {age} s ago, "
            f"{arch['ready']} segments waiting (limit {limit:.0f} s)"
        )
    if arch["last_failed_age_s"] is not None and (age is None or arch["last_failed_age_s"] < age):
        problems.append(f"archiving fails on {leader}: last failure {arch['last_failed_wal']}")
    return problems
