"""restore-drill: weekly proof that the backups bring the site back.

A marker (and, with WordPress, the content probe post) is committed on the primary and
its WAL segment archived; a scratch droplet beside the stack restores a backup from
Spaces (the newest, or the one asked for), replays the archive to its end and promotes;
then the restore is checked: the marker is there (RPO), replay reached the archive's end,
pg_amcheck and data checksums are clean, the site's tables hold the rows they held with
the marker. RTO and every step are measured and reported as Prefect artifacts under one
key per stack (the UI keeps their history). The scratch droplet is destroyed whatever
happens, and a drill first removes what a killed one left."""

from __future__ import annotations

import time
from datetime import datetime

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from blocks.secrets import WORDPRESS_ADMIN
from blocks.stack import StackSpec
from flows.report import Progress
from tasks import backup as bk
from tasks import catalog, drill, restore, scratch, site, sql, wal
from tasks.backup import Entry
from tasks.context import StackContext, opened
from tasks.hosts import Host
from tasks.packages import install_packages

SCRATCH = restore.Scratch("drill", 5499)
DRILL_STEPS = [
    "marker",
    "scratch droplet",
    "fetch, verify, extract, replay",
    "checks",
    "scratch droplet destroyed",
]


class DrillFailed(RuntimeError):
    pass


def choose_backup(
    entries: list[Entry],
    backup_id: str | None,
    target: float | None = None,
    wal_stored_at: dict[str, float] | None = None,
    now: float | None = None,
) -> Entry:
    """The newest cataloged backup, the one named, or the one a restore to `target` (epoch
    seconds) starts from; a clear error saying what exists or which times are possible."""
    if backup_id is not None and target is not None:
        raise DrillFailed("give a backup id or a target time, not both")
    if target is not None:
        try:
            chosen = catalog.backup_for_time(
                [e.backup for e in entries], target, wal_stored_at or {}, now or time.time()
            )
        except catalog.TargetTimeRefused as e:
            raise DrillFailed(f"{e}; nothing was created") from None
        return next(e for e in entries if e.backup.id == chosen.id)
    if not entries:
        raise DrillFailed("the catalog holds no backup to restore: run `lifeboat backup` first")
    if backup_id is None:
        return entries[-1]
    for entry in entries:
        if entry.backup.id == backup_id:
            return entry
    ids = ", ".join(e.backup.id for e in entries)
    raise DrillFailed(f"no backup {backup_id!r} in the catalog; it holds: {ids}")


@task(name="marker", cache_policy=NO_CACHE, retries=0)
def mark(ctx: StackContext) -> tuple[drill.Marker, dict | None, str]:
    """The probe post through WordPress (when the stack has a site), then the marker and
    the table counts on the primary, then its WAL segment closed and archived."""
    spec = ctx.spec
    probe = None
    web = ctx.with_role("wordpress")
    if web:
        with ctx.remote.connect(web[0]) as conn:
            probe = site.write_probe(conn, spec, ctx.wordpress_secrets[WORDPRESS_ADMIN])
    with ctx.remote.connect(bk.leader_host(ctx.remote, ctx.hosts)) as conn:
        database, prefix = "postgres", spec.wordpress.table_prefix
        if web:
            database = spec.wordpress.db_name
        tables = drill.counted_tables(conn, database, prefix, sql.LOCAL) if web else []
        marker = drill.write_marker(conn, database, tables)
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
    marker: drill.Marker,
    probe: dict | None,
    point_in_time: bool = False,
) -> tuple[drill.Found, dict[str, str]]:
    """Every check, each reported; DrillFailed naming every one that failed. To the end of
    the archive: the drill's marker, probe post and the site's rows are there. To a point
    in time (before the drill began): the drill's marker is not."""
    checks: dict[str, str] = {}
    problems: list[str] = []
    prefix = ctx.spec.wordpress.table_prefix
    with ctx.remote.connect(host) as conn:
        if point_in_time:
            found = drill.find_marker(conn, SCRATCH, marker, None, prefix, counted=False)
            checks["marker"] = "absent, as it should be" if not found.marker_found else "FOUND"
            if found.marker_found:
                problems.append(f"marker {marker.token}, written after the target, is restored")
        else:
            title = probe["title"] if probe else None
            found = drill.find_marker(conn, SCRATCH, marker, title, prefix)
            checks["marker"] = "found" if found.marker_found else "MISSING"
            if not found.marker_found:
                problems.append(f"marker {marker.token} committed before the drill is missing")
            if probe:
                checks["probe post"] = "found" if found.probe_found else "MISSING"
                if not found.probe_found:
                    problems.append(f"probe post {probe['title']!r} is not restored")
            differences = drill.count_differences(marker, found)
            checks["site tables"] = (
                f"{len(marker.counts)} tables, rows as with the marker"
                if not differences
                else "; ".join(differences)
            )
            problems += differences
        for name, check in (("pg_amcheck", drill.amcheck), ("checksums", drill.checksums)):
            try:
                checks[name] = check(conn, SCRATCH)
            except drill.DrillError as e:
                checks[name] = "FAILED"
                problems.append(str(e))
    if problems:
        raise DrillFailed("; ".join(problems))
    return found, checks


@task(name="scratch_remove", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def remove_scratch(ctx: StackContext) -> list[str]:
    return scratch.remove(ctx.do, ctx.spec)


@flow(name="restore-drill", log_prints=False)
def restore_drill(
    spec: StackSpec,
    credentials: str = "lab",
    backup_id: str | None = None,
    target_time: datetime | None = None,
    stack: StackContext | None = None,
) -> dict:
    """Restore a backup into a scratch droplet and prove it: marker, replay to the end of
    the archive (or to `target_time`, then promote), amcheck, checksums, the site's rows.
    Fails naming what did not hold; the report (figures, checks, or the failure) is
    published either way."""
    log = get_run_logger()
    t0 = time.monotonic()
    steps: dict[str, float] = {}
    report: dict = {"stack": spec.name, "ok": False}
    target = None
    if target_time is not None:
        if target_time.tzinfo is None:
            raise DrillFailed(
                f"target time {target_time.isoformat()} has no time zone: add one, e.g. "
                f"{target_time.isoformat()}Z for UTC"
            )
        target = target_time.timestamp()
        report["target_time"] = catalog.utc(target)
    with opened(spec, credentials, stack) as ctx:
        if not ctx.with_role("postgres"):
            raise DrillFailed(f"stack {spec.name} has no database droplet: run `lifeboat up`")
        entries, problems = bk.read_catalog(ctx.s3, spec.bucket, spec.name)
        stored = bk.wal_stored_at(ctx.s3, spec.bucket, spec.name) if target else None
        # A bad backup id or target time stops here: nothing is created.
        entry = choose_backup(entries, backup_id, target, stored)
        for p in problems:
            log.warning("catalog: %s", p)
        report["backup"] = entry.backup.id
        left = remove_scratch(ctx)
        if left:
            log.warning("removed what an earlier drill left: %s", ", ".join(left))
        host = None
        progress = Progress(f"restore drill of {spec.name}", DRILL_STEPS)
        try:
            progress.step("marker")
            lap = time.monotonic()
            marker, probe, segment = mark(ctx)
            report["marker"] = {"token": marker.token, "segment_archived": segment}
            steps["marker"] = time.monotonic() - lap
            progress.step("scratch droplet")
            lap = time.monotonic()
            host = create_scratch(ctx)
            steps["droplet"] = time.monotonic() - lap
            lap = time.monotonic()
            prepare_scratch(ctx, host)
            steps["prepare"] = time.monotonic() - lap
            progress.step("fetch, verify, extract, replay")
            timings = restore_backup(ctx, host, entry, target)
            steps["fetch and verify"] = timings.fetch
            steps["replay to writable"] = timings.recovery
            report["rto_s"] = round(time.monotonic() - t0, 1)
            progress.step("checks")
            lap = time.monotonic()
            found, checks = verify(ctx, host, marker, probe, target is not None)
            steps["checks"] = time.monotonic() - lap
            report.update(
                ok=True,
                rpo_s=None if target else found.rpo_seconds(marker),
                replay=_replay_text(timings, target),
                markers_restored=list(found.tokens),
                checks=checks,
                bytes=timings.bytes,
                database_bytes=entry.manifest["raw_bytes"],
                # Of the database restored (the stored object is compressed: 5-20x here).
                throughput_mb_s=round(
                    entry.manifest["raw_bytes"] / max(timings.fetch, 1e-3) / 1e6, 1
                ),
            )
        except Exception as e:
            report["error"] = str(e)
            raise
        finally:
            progress.step("scratch droplet destroyed")
            lap = time.monotonic()
            if host is not None:
                ctx.remote.forget(host)  # closed before its droplet goes
            try:
                remove_scratch(ctx)
            finally:
                steps["destroy"] = time.monotonic() - lap
                report["steps_s"] = {k: round(v, 1) for k, v in steps.items()}
                report["total_s"] = round(time.monotonic() - t0, 1)
                _publish(spec, report)
                progress.done("passed" if report["ok"] else f"failed: {report.get('error')}")
    log.info(
        "restore drill of %s: backup %s restored, RTO %.1f s, RPO %s s",
        spec.name,
        report["backup"],
        report["rto_s"],
        report["rpo_s"],
    )
    return report


def _replay_text(timings: restore.RestoreTimings, target: float | None) -> str:
    if target is not None:
        last = "none" if timings.last_commit is None else catalog.utc(timings.last_commit)
        return f"to target {catalog.utc(target)}, promoted; last commit replayed {last}"
    r = timings.replay
    assert r is not None  # a restore to the archive's end always checks its replay
    return (
        f"timeline {r.timeline} to {r.lsn_text} (segment {r.segment}; archive's end {r.expected})"
    )


def _publish(spec: StackSpec, report: dict) -> None:
    verdict = "passed" if report["ok"] else "FAILED"
    rows = [
        {"field": k, "value": str(v)}
        for k, v in report.items()
        if k not in ("steps_s", "checks", "marker", "markers_restored")
    ]
    rows += [{"field": f"step: {k}", "value": f"{v} s"} for k, v in report["steps_s"].items()]
    rows += [{"field": f"check: {k}", "value": v} for k, v in report.get("checks", {}).items()]
    create_table_artifact(
        table=rows,
        key=f"restore-drill-{spec.name}",
        description=f"restore drill of stack {spec.name}: {verdict}",
    )
    lines = [f"# restore drill of {spec.name}: {verdict}", ""]
    if not report["ok"]:
        lines += [f"**{report.get('error', 'failed')}**", ""]
    lines += [f"- backup: {report.get('backup')}"]
    if report["ok"]:
        lines += [
            f"- RTO (drill start to writable): {report['rto_s']} s",
            f"- RPO (marker): {report['rpo_s']} s"
            if report.get("target_time") is None
            else f"- point in time: {report['target_time']}",
            f"- replay: {report['replay']}",
            f"- fetched {report['bytes'] / 1e6:.1f} MB stored, "
            f"{report['database_bytes'] / 1e6:.1f} MB restored at "
            f"{report['throughput_mb_s']} MB/s",
        ]
        lines += [f"- {k}: {v}" for k, v in report["checks"].items()]
    lines += ["", "| step | seconds |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in report["steps_s"].items()]
    lines += ["", f"total: {report['total_s']} s (scratch droplet destroyed)"]
    create_markdown_artifact(
        markdown="\n".join(lines),
        key=f"restore-drill-{spec.name}-report",
        description=f"restore drill of stack {spec.name}: {verdict}",
    )
