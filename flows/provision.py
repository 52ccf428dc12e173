"""provision: from a stack spec to droplets, VPC, firewalls, load balancer and the Spaces
bucket. The DigitalOcean API, by tag, is the inventory: a rerun creates only what is
missing, and the run reports each resource as created, updated or unchanged."""

from __future__ import annotations

from prefect import flow, get_run_logger

from blocks.stack import StackSpec
from flows.report import publish
from tasks import droplets, spaces
from tasks.context import StackContext, opened
from tasks.hosts import Host


@flow(name="provision", log_prints=False)
def provision(
    spec: StackSpec, credentials: str = "lab", stack: StackContext | None = None
) -> list[Host]:
    """Droplets per group, VPC, tags, SSH key, firewalls, load balancer, Spaces bucket.
    `stack`: the context of a parent flow (`up`); without it, one is opened here."""
    log = get_run_logger()
    with opened(spec, credentials, stack) as ctx:
        droplets.check_account(ctx)
        outcome = droplets.cloud_resources(ctx)
        outcome["spaces bucket"] = spaces.bucket(ctx.s3, spec.bucket, spec.backup.keep_deleted_days)
        ctx.hosts = droplets.verify(ctx)
    for what, result in outcome.items():
        log.info("%s: %s", what, result)
    publish(f"provision-{spec.name}", f"provision of stack {spec.name}", outcome)
    return ctx.hosts
