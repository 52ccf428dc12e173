"""wordpress: the web tier, rolled out one droplet at a time behind health gates.

First the WordPress database and role on the primary (through HAProxy). Then, for each
wordpress droplet in turn: if anything differs (files, release, site, services), take it
out of the load balancer, deploy, wait for its own health endpoint (a write and a read
through HAProxy), put it back and wait until the load balancer routes to it. A droplet
that fails its gate stops the rollout, left out of the load balancer while every other
droplet keeps serving; the run fails saying which droplet and what its endpoint said. A
rerun with nothing changed restarts nothing and takes no droplet out. Ends by checking
the site through the load balancer's address. Where WordPress core comes from is the
spec's `wordpress.source`."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger

from blocks.stack import StackSpec
from flows.report import publish
from tasks import wordpress as wp
from tasks.context import StackContext, opened


@flow(name="wordpress", log_prints=False)
def wordpress(spec: StackSpec, credentials: str = "lab", stack: StackContext | None = None) -> dict:
    """nginx + php-fpm + WordPress on the web droplets, one at a time behind health gates.
    `stack`: the context of a parent flow (`up`); without it, one is opened here."""
    log = get_run_logger()
    t0 = time.monotonic()
    log.info("web tier source: %s", wp.source_note(spec))
    if not wp.debian_package(spec):
        wp.check_pins(spec)
    steps: dict[str, str] = {}
    timings: dict[str, float] = {}
    title = f"wordpress rollout of stack {spec.name}"
    with opened(spec, credentials, stack) as ctx:
        ctx.require_complete()
        web = ctx.with_role("wordpress")
        t = time.monotonic()
        done = wp.database(ctx, ctx.with_role("haproxy")[0])
        steps["database"] = "changed: " + "; ".join(done) if done else "unchanged"
        timings["database"] = round(time.monotonic() - t, 1)
        lb = wp.load_balancer(ctx.do, spec)
        for i, host in enumerate(web):
            try:
                rolled = wp.roll_one(ctx, lb, host)
            except Exception as exc:
                steps[host.name] = f"FAILED: {exc}"
                steps.update(
                    {later.name: "not reached (rollout stopped)" for later in web[i + 1 :]}
                )
                publish(f"wordpress-{spec.name}", title, steps)
                raise
            steps[host.name] = rolled["outcome"]
            timings[host.name] = rolled["seconds"]
        if not wp.debian_package(spec):
            t = time.monotonic()
            steps["site"] = wp.install_site(ctx, ctx.with_role("haproxy")[0], web[0])
            probed = wp.probe(ctx, lb, web[-1])
            steps["probe"] = probed["read"]
            timings["site"] = round(time.monotonic() - t, 1)
        t = time.monotonic()
        verified = wp.verify_site(lb, spec)
        timings["verify"] = round(time.monotonic() - t, 1)
    steps["verified"] = verified["health"]
    steps["wordpress core"] = verified["wordpress"]
    timings["total"] = round(time.monotonic() - t0, 1)
    for what, outcome in steps.items():
        log.info("%s: %s", what, outcome)
    publish(f"wordpress-{spec.name}", title, steps)
    return {
        "stack": spec.name,
        "changed": any(v.startswith("changed") for v in steps.values()),
        "source": wp.source_note(spec),
        "load_balancer": lb["ip"],
        "steps": steps,
        "verified": verified,
        "timings": timings,
    }
