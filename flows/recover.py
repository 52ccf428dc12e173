"""recover: runbooks for one click or an API call. `switchover` moves the primary to a
chosen replica (or the synchronous standby); `reinit` rebuilds a replica's data from the
leader. Each verifies the cluster afterwards: healthy, HAProxy routing to the leader,
the archive current. (Replacing a dead droplet and restoring into a new cluster are not
built yet: issues 12 and 11.)"""

from __future__ import annotations

from prefect import flow, get_run_logger

from blocks.stack import StackSpec
from flows.report import publish
from tasks import recover
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


def _report(spec: StackSpec, what: str, result: dict) -> None:
    steps = {k: str(v) for k, v in result.items()}
    publish(f"recover-{what}-{spec.name}", f"recover {what} of stack {spec.name}", steps)
    get_run_logger().info("recover %s of %s: %s", what, spec.name, steps)
