"""destroy: remove a stack from the cloud when the operator says so (after `recover
restore-cluster` and `switch-site`, the old stack; or a test stack).

It refuses unless `confirm` is the stack's name, listing what it would remove, before
touching anything. Then the droplets (the drill's scratch droplet too), load balancer,
firewalls, VPC and tags go, and the host keys pinned for those droplets; it ends by
checking that nothing of the stack is left. The stack's objects in Spaces (base backups,
WAL, media) are kept, and reported: they may be the only copy of the data, and the
bucket's lifecycle rules keep governing them. `lifeboat destroy` also removes the stack's
deployments and automations from the Lifeboat server (flows/service.py: undeploy)."""

from __future__ import annotations

from prefect import flow, get_run_logger

from blocks.stack import StackSpec
from flows.report import publish
from tasks import droplets, layout, spaces
from tasks.context import StackContext, opened


class DestroyRefused(ValueError):
    """Not confirmed: nothing was touched."""


@flow(name="destroy", log_prints=False)
def destroy(
    spec: StackSpec, credentials: str = "lab", confirm: str = "", stack: StackContext | None = None
) -> dict:
    """Remove the stack's cloud resources (not its Spaces objects); `confirm` must be the
    stack's name. Verifies that nothing of it is left."""
    log = get_run_logger()
    with opened(spec, credentials, stack) as ctx:
        present = droplets.owned(ctx.do, spec)
        if confirm != spec.name:
            what = ", ".join(present) or "nothing (none is left)"
            raise DestroyRefused(
                f"destroying stack {spec.name} removes {what}; nothing was touched: to go "
                f"ahead, confirm with the stack's name (--confirm {spec.name})"
            )
        gone = droplets.destroy(ctx)  # also when nothing is listed: tags may be left
        kept = spaces.stored(ctx.s3, spec.bucket, layout.stack_prefix(spec.name))
    result = {
        "stack": spec.name,
        "removed": gone,
        "kept in Spaces": f"{kept} (base backups, WAL, media)",
    }
    log.info("stack %s destroyed: %d resources removed", spec.name, len(gone))
    report = {"removed": ", ".join(gone) or "nothing", "kept": result["kept in Spaces"]}
    publish(f"destroy-{spec.name}", f"destroy of stack {spec.name}", report)
    return result
