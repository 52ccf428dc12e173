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
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from blocks.stack import StackSpec
from flows.report import Progress
from tasks import backup as bk
from tasks import catalog, drill, restore
from tasks.backup import Entry
from tasks.context import StackContext, opened
from tasks.drill import DrillFailed

DRILL_STEPS = [
    "marker",
    "scratch droplet",
    "fetch, verify, extract, replay",
    "checks",
    "scratch droplet destroyed",
]


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
    target = target_epoch(target_time)
    report: dict = {"stack": spec.name, "ok": False}
    if target is not None:
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
        left = drill.remove_scratch(ctx)
        if left:
            log.warning("removed what an earlier drill left: %s", ", ".join(left))
        _drill(ctx, entry, target, report, t0)
    log.info(
        "restore drill of %s: backup %s restored, RTO %.1f s, RPO %s s",
        spec.name,
        report["backup"],
        report["rto_s"],
        report["rpo_s"],
    )
    return report


def target_epoch(target_time: datetime | None) -> float | None:
    """The target time in epoch seconds; one without a time zone is refused (whose 14:02?)."""
    if target_time is None:
        return None
    if target_time.tzinfo is None:
        raise DrillFailed(
            f"target time {target_time.isoformat()} has no time zone: add one, e.g. "
            f"{target_time.isoformat()}Z for UTC"
        )
    return target_time.timestamp()


def _drill(ctx: StackContext, entry: Entry, target: float | None, report: dict, t0: float) -> None:
    """Marker, scratch droplet, restore, checks, each step timed into `report`; the scratch
    droplet is removed and the report published whatever happens."""
    steps: dict[str, float] = {}
    progress = Progress(f"restore drill of {ctx.spec.name}", DRILL_STEPS)
    host = None
    try:
        progress.step("marker")
        with _timed(steps, "marker"):
            marker, probe, segment = drill.mark(ctx)
        report["marker"] = {"token": marker.token, "segment_archived": segment}
        progress.step("scratch droplet")
        with _timed(steps, "droplet"):
            host = drill.create_scratch(ctx)
        with _timed(steps, "prepare"):
            drill.prepare_scratch(ctx, host)
        progress.step("fetch, verify, extract, replay")
        timings = drill.restore_backup(ctx, host, entry, target)
        steps["fetch and verify"] = timings.fetch
        steps["replay to writable"] = timings.recovery
        report["rto_s"] = round(time.monotonic() - t0, 1)
        progress.step("checks")
        with _timed(steps, "checks"):
            found, checks = drill.verify(ctx, host, marker, probe, target is not None)
        report.update(
            _figures(entry, timings, target),
            ok=True,
            rpo_s=None if target else found.rpo_seconds(marker),
            markers_restored=list(found.tokens),
            checks=checks,
        )
    except Exception as e:
        report["error"] = str(e)
        raise
    finally:
        progress.step("scratch droplet destroyed")
        try:
            with _timed(steps, "destroy"):
                if host is not None:
                    ctx.remote.forget(host)  # closed before its droplet goes
                drill.remove_scratch(ctx)
        finally:
            report["steps_s"] = {k: round(v, 1) for k, v in steps.items()}
            report["total_s"] = round(time.monotonic() - t0, 1)
            _publish(ctx.spec, report)
            progress.done("passed" if report["ok"] else f"failed: {report.get('error')}")


@contextmanager
def _timed(steps: dict[str, float], name: str) -> Iterator[None]:
    """The step's seconds into `steps`, also when it fails."""
    lap = time.monotonic()
    try:
        yield
    finally:
        steps[name] = time.monotonic() - lap


def _figures(entry: Entry, timings: restore.RestoreTimings, target: float | None) -> dict:
    raw = entry.manifest["raw_bytes"]
    return {
        "replay": _replay_text(timings, target),
        "bytes": timings.bytes,
        "database_bytes": raw,
        # Of the database restored (the stored object is compressed: 5-20x here).
        "throughput_mb_s": round(raw / max(timings.fetch, 1e-3) / 1e6, 1),
    }


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
