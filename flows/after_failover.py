"""after-failover: what an operator does once the primary has moved, run by an automation
on Patroni's role-change event (deployments/prefect.yaml) or by hand.

Every database member back and streaming (the old primary rejoins by itself after
pg_rewind; one that cannot is rebuilt from the leader), the cluster healthy with HAProxy
routing to the new leader and the archive current, the site answering through the load
balancer, and a base backup on the new timeline, so the next restore starts from it
instead of replaying across the timeline switch. Reported as a table artifact."""

from __future__ import annotations

from prefect import flow, get_run_logger

from blocks.stack import StackSpec
from flows.backup import backup
from flows.report import publish
from tasks import recover
from tasks import wordpress as wp
from tasks.context import StackContext, opened


class AfterFailoverError(RuntimeError):
    pass


@flow(name="after-failover", log_prints=False)
def after_failover(
    spec: StackSpec,
    credentials: str = "lab",
    leader: str | None = None,
    rejoin_timeout: float = 600,
    stack: StackContext | None = None,
) -> dict:
    """`leader`: the member the event says became primary (the run checks who leads now:
    the primary may have moved again since)."""
    log = get_run_logger()
    with opened(spec, credentials, stack) as ctx:
        rejoined = recover.rejoin(ctx, rejoin_timeout)
        cluster = recover.verify(ctx)
        if leader and cluster["leader"] != leader:
            log.warning("the event named %s, but %s leads now", leader, cluster["leader"])
        site = "no web tier"
        if spec.nodes_with("wordpress"):
            site = wp.verify_site(wp.load_balancer(ctx.do, spec), spec)["health"]
        taken = backup(spec, credentials, wait_seconds=900, stack=ctx)
    if taken["timeline"] != cluster["timeline"]:
        raise AfterFailoverError(
            f"backup {taken['id']} is on timeline {taken['timeline']}, the leader on "
            f"{cluster['timeline']}: run the backup runbook again"
        )
    steps = {
        "leader": f"{cluster['leader']} (timeline {cluster['timeline']})",
        "replicas": ", ".join(f"{n}: {what}" for n, what in sorted(rejoined.items())),
        "routing": f"HAProxy routes to {cluster['leader']}; archived {cluster['archived']}",
        "site": site,
        "backup": f"{taken['id']} on timeline {taken['timeline']} ({taken['seconds']} s)",
    }
    publish(f"after-failover-{spec.name}", f"after failover of stack {spec.name}", steps)
    log.info("after failover of %s: %s", spec.name, steps)
    return {**steps, "backup_id": taken["id"], "timeline": cluster["timeline"]}
