"""recover: runbooks for one click or an API call. `switchover` moves the primary to a
chosen replica (or the synchronous standby); `reinit` rebuilds a replica's data from the
leader; `replace` puts a new droplet in the place of a lost one (same name, roles and
tags), joined as a replica and etcd member, behind the load balancer and firewalls. Each
verifies the cluster afterwards: healthy, HAProxy routing to the leader, the archive
current. (Restoring into a new cluster is not built yet: issue 11.)"""

from __future__ import annotations

import datetime

from prefect import flow, get_run_logger

from blocks.stack import StackSpec
from flows.cluster import cluster
from flows.provision import provision
from flows.report import publish
from flows.wordpress import wordpress
from tasks import backup, layout, recover, spaces
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


def _report(spec: StackSpec, what: str, result: dict) -> None:
    steps = {k: str(v) for k, v in result.items()}
    publish(f"recover-{what}-{spec.name}", f"recover {what} of stack {spec.name}", steps)
    get_run_logger().info("recover %s of %s: %s", what, spec.name, steps)
