"""failover-drill: fault the primary while a probe writes through HAProxy, and measure
what the site lost.

It starts only on a healthy cluster (one leader, replicas streaming with no lag, a
synchronous standby when asked for, the archive current). A probe on a web droplet writes
as WordPress does every 50 ms; the fault hits the primary (`switchover`, the planned one
and the default; `stop-patroni`, `kill-postgres`, `power-off`, `partition` (the primary
cut off from everything) and `etcd-partition` (from etcd only), which need
allow_destructive); the drill waits for a leader that takes writes, puts the cluster back
(powers the droplet on, starts Patroni) and waits until it is healthy again. Then it
checks that every acknowledged write is on the primary (0 lost) and that archiving is
current, and reports the write gap, time to a new leader, the old primary's return (with
or without pg_rewind, read from Patroni's journal on it) and the timeline, as Prefect
artifacts (a table, and a chart of acknowledged and failed writes over time)."""

from __future__ import annotations

import secrets
from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from blocks.stack import StackSpec
from flows.report import Progress
from tasks import failover
from tasks.context import StackContext, opened

Fault = Literal[
    "switchover", "stop-patroni", "kill-postgres", "power-off", "partition", "etcd-partition"
]
# No progress update between the fault and the first write after it: it would delay the
# observations the figures are made of.
FAILOVER_STEPS = [
    "precheck",
    "fault under the write probe",
    "healthy again",
    "writes and archive checked",
]


@flow(name="failover-drill", log_prints=False)
def failover_drill(
    spec: StackSpec,
    credentials: str = "lab",
    fault: Fault = "switchover",
    allow_destructive: bool = False,
    stack: StackContext | None = None,
) -> dict:
    """Fault the primary under a write probe; measure the write gap, check 0 acknowledged
    writes lost and one leader, put the cluster back and wait until it is healthy."""
    failover.check_fault(fault, allow_destructive)  # before anything is touched
    log = get_run_logger()
    progress = Progress(f"{fault} drill of {spec.name}", FAILOVER_STEPS)
    with opened(spec, credentials, stack) as ctx:
        ctx.require_complete()
        web = ctx.require_role("wordpress")[0]
        progress.step("precheck")
        members = failover.precheck(ctx)
        old = next(m.name for m in members if m.is_leader)
        candidate = next(
            (m.name for m in members if m.role == "sync_standby"),
            next(m.name for m in members if not m.is_leader),
        )
        run_id = f"{spec.name}-{fault}-{secrets.token_hex(4)}"
        progress.step("fault under the write probe")
        window = failover.fault_window(ctx, fault, web, run_id, old, candidate)
        progress.step("healthy again")
        back = failover.wait_back(ctx, window.fault_at)
        returned = failover.old_primary_return(ctx, ctx.host(old), window.fault_at, back["leader"])
        progress.step("writes and archive checked")
        lost, archived = failover.check_writes(ctx, back["leader"], run_id, window.writes)
    gap = failover.write_gap(window.writes, window.fault_at)
    report = _report(spec, fault, old, window, back) | {
        "acked_writes_lost": len(lost),
        "old_primary": returned,
        "archive_current": archived,
        "probe_from": web.name,
    }
    _publish(spec, report, failover.timeline_chart(window.writes, window.fault_at))
    progress.done(f"{len(lost)} acknowledged writes lost")
    if lost:
        raise failover.FailoverError(
            f"{len(lost)} acknowledged writes are not on the new primary: {lost[:10]}"
        )
    if gap.seconds is None:
        raise failover.FailoverError("no write was acknowledged after the fault")
    log.info(
        "%s drill of %s: %s -> %s, write gap %.2f s, 0 acknowledged writes lost",
        *(fault, spec.name, old, back["leader"], gap.seconds),
    )
    return report


def _report(spec: StackSpec, fault: str, old: str, w: failover.Window, back: dict) -> dict:
    """The drill's figures, in the order the table shows them."""
    gap = failover.write_gap(w.writes, w.fault_at)
    site_gap = failover.write_gap(w.pages, w.fault_at)
    return {
        "stack": spec.name,
        "fault": fault,
        "old_leader": old,
        "new_leader": back["leader"],
        "leader_after_fault_s": round(w.leader_at - w.fault_at, 2),
        "write_gap_s": None if gap.seconds is None else round(gap.seconds, 2),
        "writes_acked": gap.acked,
        "writes_failed": gap.failed,
        "site_gap_s": None if site_gap.seconds is None else round(site_gap.seconds, 2),
        "pages_ok": site_gap.acked,
        "pages_failed": site_gap.failed,
        "timeline": back["timeline"],
        "healthy_again_s": back["seconds"],
    }


def _publish(spec: StackSpec, report: dict, chart: str) -> None:
    create_table_artifact(
        table=[{"field": k, "value": str(v)} for k, v in report.items()],
        key=f"failover-drill-{spec.name}",
        description=f"{report['fault']} drill of stack {spec.name}",
    )
    lines = [
        f"# {report['fault']} drill of {spec.name}",
        "",
        f"- {report['old_leader']} -> {report['new_leader']} (timeline {report['timeline']})",
        f"- write gap: {report['write_gap_s']} s; leader after {report['leader_after_fault_s']} s",
        f"- writes acknowledged {report['writes_acked']}, failed {report['writes_failed']}, "
        f"acknowledged but lost: {report['acked_writes_lost']}",
        f"- the site through the load balancer: gap {report['site_gap_s']} s (front pages "
        f"served {report['pages_ok']}, failed {report['pages_failed']}; none served after "
        "the fault when the gap is None)",
        f"- healthy again {report['healthy_again_s']} s after the fault; archive current "
        f"({report['archive_current']})",
        f"- the old primary: {report['old_primary']}",
        "",
        "Writes through HAProxy from " + report["probe_from"] + " ('#' acknowledged, 'x' failed):",
        "",
        "```",
        chart,
        "```",
    ]
    create_markdown_artifact(
        markdown="\n".join(lines),
        key=f"failover-drill-{spec.name}-chart",
        description=f"{report['fault']} drill of stack {spec.name}",
    )
