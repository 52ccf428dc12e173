"""recover: runbooks for one click or an API call. `switchover` moves the primary to a
chosen replica (or the synchronous standby); `reinit` rebuilds a replica's data from the
leader; `replace` puts a new droplet in the place of a lost one (same name, roles and
tags), joined as a replica and etcd member, behind the load balancer and firewalls. Each
verifies the cluster afterwards: healthy, HAProxy routing to the leader, the archive
current. `restore-cluster` builds a new stack whose cluster is the source's as it was at
a target time (tasks/pitr.py), with the source's uploads, a site of its own and a first
backup."""

from __future__ import annotations

import datetime
import time

from prefect import flow, get_run_logger

from blocks.stack import StackSpec, resource_name
from flows.backup import backup as flows_backup
from flows.cluster import cluster
from flows.provision import provision
from flows.report import publish
from flows.wordpress import wordpress
from tasks import backup, layout, pitr, recover, spaces
from tasks.backup import first_backup_needed
from tasks.context import StackContext, opened


@flow(name="recover-switchover", log_prints=False)
def recover_switchover(
    spec: StackSpec,
    credentials: str = "lab",
    to: str | None = None,
    stack: StackContext | None = None,
) -> dict:
    """A planned switchover to `to` (default: the synchronous standby), verified."""
    with opened(spec, credentials, stack) as ctx:
        result = recover.switch(ctx, to)
    _report(spec, "switchover", result)
    return result


@flow(name="recover-reinit", log_prints=False)
def recover_reinit(
    spec: StackSpec, credentials: str = "lab", member: str = "", stack: StackContext | None = None
) -> dict:
    """A replica's data directory taken again from the leader, then verified."""
    with opened(spec, credentials, stack) as ctx:
        result = recover.reinit(ctx, member)
    _report(spec, "reinit", result)
    return result


@flow(name="recover-replace", log_prints=False)
def recover_replace(
    spec: StackSpec,
    credentials: str = "lab",
    member: str = "",
    allow_destructive: bool = False,
    stack: StackContext | None = None,
) -> dict:
    """Droplet `member` (off, gone or broken) destroyed and built again: provisioned,
    joined to etcd and Patroni, routed, the site deployed again when the droplet served
    it or routed it (a web or HAProxy droplet); then verified. A running droplet is
    replaced only with `allow_destructive`; the leader never (switch over first)."""
    with opened(spec, credentials, stack) as ctx:
        old = recover.retire(ctx, member, allow_destructive)
        provision(spec, credentials, stack=ctx)
        built = cluster(spec, credentials, stack=ctx)
        new = recover.new_droplet(ctx, member, old["old_droplet"])
        if {"haproxy", "wordpress"} & set(new.roles):  # the site's path to the database
            wordpress(spec, credentials, stack=ctx)
        result = {
            "member": member,
            "old_droplet": old["old_droplet"],
            "old_status": old["old_status"],
            "new_droplet": new.droplet_id,
            "roles": ", ".join(new.roles),
            "cluster": built["steps"],
            **recover.verify(ctx),
        }
    _report(spec, "replace", result)
    return result


@flow(name="recover-undelete", log_prints=False)
def recover_undelete(
    spec: StackSpec,
    credentials: str = "lab",
    since: datetime.datetime | None = None,
    stack: StackContext | None = None,
) -> dict:
    """Objects of the stack (backups, WAL, media) deleted at or after `since` brought back
    from the bucket's versions (kept `backup.keep_deleted_days`); then the catalog as it
    now reads. A deletion older than that is gone for good."""
    now = datetime.datetime.now(datetime.UTC)
    if since is None or since.tzinfo is None or since > now:
        raise recover.RecoverError(
            f"since={since}: give a moment in the past with its time zone, e.g. "
            f"{(now - datetime.timedelta(hours=1)).isoformat(timespec='seconds')}"
        )
    with opened(spec, credentials, stack) as ctx:
        keys = spaces.undelete_task(ctx.s3, spec.bucket, layout.stack_prefix(spec.name), since)
        catalog, problems = backup.read_catalog(ctx.s3, spec.bucket, spec.name)
    result = {
        "restored": len(keys),
        "keys": keys,
        "backups": len(catalog),
        "catalog problems": problems,
    }
    _report(spec, "undelete", {k: v for k, v in result.items() if k != "keys"})
    return result


@flow(name="recover-restore-cluster", log_prints=False)
def recover_restore_cluster(
    spec: StackSpec,
    credentials: str = "lab",
    source: str = "",
    target_time: datetime.datetime | None = None,
    source_bucket: str | None = None,
    stack: StackContext | None = None,
) -> dict:
    """A new stack `spec` whose cluster is stack `source`'s at `target_time`: its backup
    and WAL replayed to the target by Patroni's bootstrap (then promoted), replicas
    cloned, HAProxy routing, archiving under the new stack's own prefix, the source's
    uploads copied, the web tier rolled out, a first backup. `source_bucket`: where the
    source's backups are (default `lifeboat-<source>`). The source is only read."""
    now = datetime.datetime.now(datetime.UTC)
    if target_time is None or target_time.tzinfo is None:
        raise pitr.RestoreRefused(
            f"target_time={target_time}: give a moment with its time zone, e.g. "
            f"{(now - datetime.timedelta(minutes=10)).isoformat(timespec='seconds')}"
        )
    t0 = time.monotonic()
    timings: dict[str, float] = {}

    def lap(step: str) -> None:
        timings[step] = round(time.monotonic() - t0 - sum(timings.values()), 1)

    with opened(spec, credentials, stack) as ctx:
        bucket = source_bucket or resource_name(source)
        # A bad source or target time stops here: nothing is created.
        point = pitr.plan_task(
            ctx.s3, spec.name, source, bucket, target_time.timestamp(), now.timestamp()
        )
        lap("plan")
        provision(spec, credentials, stack=ctx)
        lap("provision")
        media = pitr.copy_media_task(ctx.s3, point, spec.bucket, spec.name)
        lap("media")
        restored = cluster(spec, credentials, stack=ctx, restore=point)
        lap("restore")
        # Once more without the bootstrap settings: what `up` renders from now on.
        again = cluster(spec, credentials, stack=ctx)
        lap("cluster")
        with ctx.remote.connect(backup.leader_host(ctx.remote, ctx.hosts)) as conn:
            stopped = pitr.stopped_at(conn, point)
        web = wordpress(spec, credentials, stack=ctx) if ctx.with_role("wordpress") else {}
        lap("web tier")
        first = (
            flows_backup(spec, credentials, stack=ctx)
            if first_backup_needed(ctx)
            else {"id": "none needed: the catalog has one of this cluster", "timeline": "-"}
        )
        lap("first backup")
    timings["total"] = round(time.monotonic() - t0, 1)
    result = {
        "stack": spec.name,
        "source": source,
        "source backup": point.backup_id,
        "target time": point.target_time,
        **stopped,
        "cluster": "changed" if restored["changed"] or again["changed"] else "unchanged",
        "media copied": media["copied"],
        "media kept": media["kept"],
        "site": web.get("steps", {}).get("site", "no web tier"),
        "first backup": f"{first['id']} (timeline {first['timeline']})",
        "timings": timings,
    }
    _report(spec, "restore-cluster", result)
    return result


def _report(spec: StackSpec, what: str, result: dict) -> None:
    steps = {k: str(v) for k, v in result.items()}
    publish(f"recover-{what}-{spec.name}", f"recover {what} of stack {spec.name}", steps)
    get_run_logger().info("recover %s of %s: %s", what, spec.name, steps)
