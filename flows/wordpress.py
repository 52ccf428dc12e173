"""wordpress: the web tier, rolled out one droplet at a time behind health gates.

First the WordPress database and role on the primary (through HAProxy). Then, for each
wordpress droplet in turn: if anything differs (files, release, site, services), take it
out of the load balancer, deploy, wait for its own health endpoint (a write and a read
through HAProxy), put it back and wait until the load balancer routes to it. A droplet
that fails its gate stops the rollout, left out of the load balancer while every other
droplet keeps serving; the run fails saying which droplet and what its endpoint said. A
rerun with nothing changed restarts nothing and takes no droplet out. Ends by checking
the site through the load balancer's address."""

from __future__ import annotations

import time

import pydo
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks.credentials import DigitalOceanCredentials
from blocks.secrets import (
    POSTGRES_SUPERUSER,
    WORDPRESS_DB,
    WORDPRESS_SALTS,
    new_password,
    stack_secret,
)
from blocks.stack import StackSpec
from flows import remote as rm
from flows.remote import Remote, Secrets
from flows.report import publish
from tasks import droplets, haproxy
from tasks import wordpress as wp
from tasks.hosts import Host

step = task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
# Gates: retrying would only wait longer or redo a half rollout; fail with the reason.
check = task(cache_policy=NO_CACHE, retries=0)


def _secrets(stack: str) -> Secrets:
    values = {
        WORDPRESS_DB: stack_secret(stack, WORDPRESS_DB),
        POSTGRES_SUPERUSER: stack_secret(stack, POSTGRES_SUPERUSER),
    }
    for key, name in WORDPRESS_SALTS.items():
        values[key] = stack_secret(stack, name, lambda: new_password(64))
    return Secrets(values)


@step
def database(remote: Remote, host: Host, spec: StackSpec, secrets: Secrets) -> list[str]:
    with remote.connect(host) as conn:
        haproxy.place_pgpass(conn, spec, secrets[POSTGRES_SUPERUSER])
        return wp.prepare_database(conn, spec, secrets[WORDPRESS_DB])


@check
def roll_one(
    remote: Remote,
    do: pydo.Client,
    lb: dict,
    host: Host,
    spec: StackSpec,
    credentials: str,
    haproxy_hosts: list[Host],
    secrets: Secrets,
) -> dict:
    """One droplet through the gate. Returns {"outcome", "seconds"}."""
    log = get_run_logger()
    t0 = time.monotonic()
    salts = {k: secrets[k] for k in WORDPRESS_SALTS}
    files = wp.site_files(spec, host, haproxy_hosts, credentials, secrets[WORDPRESS_DB], salts)
    target = wp.core_dir(spec, credentials)
    in_lb = host.droplet_id in wp.lb_members(do, lb["id"])
    with remote.connect(host) as conn:
        drift = wp.drift(conn, files, target)
        if not drift and in_lb:
            wp.wait_local_health(conn, spec, host.name, timeout=15)
            return {"outcome": "unchanged", "seconds": round(time.monotonic() - t0, 1)}
        if drift:
            log.info(
                "%s differs (%s): out of the load balancer to deploy", host.name, drift.describe()
            )
            if in_lb:
                wp.lb_remove(do, lb["id"], host.droplet_id)
        try:
            fetch = not wp.offline(credentials)
            done = wp.deploy(conn, spec, files, target, fetch) if drift else []
            wp.wait_local_health(conn, spec, host.name)
        except wp.WordPressError as exc:
            # The droplet stays out of the load balancer; the ones before it serve.
            raise wp.WordPressError(
                f"rollout stopped at {host.name}, left out of the load balancer: {exc}"
            ) from None

    wp.lb_add(do, lb["id"], host.droplet_id)
    wp.wait_lb_routes_to(lb, host.name)
    what = "; ".join(done) if done else "put back in the load balancer"
    return {"outcome": f"changed: {what}", "seconds": round(time.monotonic() - t0, 1)}


@check
def verify_site(lb: dict, spec: StackSpec, credentials: str) -> dict[str, str]:
    """Through the load balancer's address: the health endpoint (a write and a read
    through HAProxy), wp-config never served, static files cached long; and what
    WordPress core answers."""
    base = f"http://{lb['ip']}"
    code, headers, body = wp.http_get(wp.lb_health_url(lb))
    healthy, said = wp.parse_health(code, body)
    if not healthy:
        raise wp.WordPressError(f"health endpoint through the load balancer: {said}")
    if "no-store" not in headers.get("cache-control", ""):
        raise wp.WordPressError("the health endpoint is cacheable (no Cache-Control: no-store)")
    result = {"health": f"{said} via {base}"}
    for path in ("/wp-config.php", "/wp-config-sample.php", "/.htaccess"):
        code, _, _ = wp.http_get(base + path)
        if code != 403:
            raise wp.WordPressError(f"{base}{path} answered {code}, expected 403")
    result["denied"] = "wp-config*.php and dotfiles answer 403"
    code, headers, _ = wp.http_get(f"{base}/wp-includes/css/dashicons.min.css")
    if code != 200 or "max-age=31536000" not in headers.get("cache-control", ""):
        raise wp.WordPressError(
            f"static asset answered {code} with Cache-Control {headers.get('cache-control')!r}"
        )
    result["static"] = "served with a one-year Cache-Control"
    result["wordpress"] = _core_answer(base, credentials)
    return result


def _core_answer(base: str, credentials: str) -> str:
    """What `/` says. Without PG4WP (the lab) wp-config.php refuses with 503 before
    WordPress would speak MySQL to PostgreSQL: proof the request went through nginx,
    php-fpm and WordPress's config loader to our wp-config.php, and no further. With PG4WP,
    a fresh site answers (or redirects to its installer)."""
    code, _, body = wp.http_get(base + "/")
    if wp.offline(credentials):
        if code == 503 and "PG4WP" in body:
            return (
                "WordPress core (Debian's package) served; wp-config.php loaded and stops at "
                "the missing PG4WP (503)"
            )
        raise wp.WordPressError(f"/ did not reach wp-config.php: HTTP {code}: {body[:200]!r}")
    if code in (200, 301, 302):
        return f"WordPress answers HTTP {code}"
    raise wp.WordPressError(f"WordPress answered / with HTTP {code}: {body[:200]!r}")


@flow(name="wordpress", log_prints=False)
def wordpress(spec: StackSpec, credentials: str = "lab") -> dict:
    """nginx + php-fpm + WordPress on the web droplets, one at a time behind health gates."""
    log = get_run_logger()
    t0 = time.monotonic()
    log.info("web tier source: %s", wp.source_note(spec, credentials))
    if not wp.offline(credentials):
        wp.check_pins(spec)
    hosts, remote = rm.load(spec, credentials)
    web = [h for h in hosts if "wordpress" in h.roles]
    ha_hosts = [h for h in hosts if "haproxy" in h.roles]
    secrets = _secrets(spec.name)
    do = droplets.api(DigitalOceanCredentials.load(credentials))
    steps: dict[str, str] = {}
    timings: dict[str, float] = {}
    try:
        t = time.monotonic()
        done = database(remote, ha_hosts[0], spec, secrets)
        steps["database"] = "changed: " + "; ".join(done) if done else "unchanged"
        timings["database"] = round(time.monotonic() - t, 1)
        lb = wp.load_balancer(do, spec)
        for host in web:
            try:
                rolled = roll_one(remote, do, lb, host, spec, credentials, ha_hosts, secrets)
            except Exception as exc:
                steps[host.name] = f"FAILED: {exc}"
                for later in web[web.index(host) + 1 :]:
                    steps[later.name] = "not reached (rollout stopped)"
                publish(f"wordpress-{spec.name}", f"wordpress rollout of stack {spec.name}", steps)
                raise
            steps[host.name] = rolled["outcome"]
            timings[host.name] = rolled["seconds"]
        t = time.monotonic()
        verified = verify_site(lb, spec, credentials)
        timings["verify"] = round(time.monotonic() - t, 1)
    finally:
        pinned = rm.save_pins(credentials, remote)
        if pinned:
            log.info("pinned %d new SSH host key(s) in block %r", pinned, credentials)
    steps["verified"] = verified["health"]
    steps["wordpress core"] = verified["wordpress"]
    timings["total"] = round(time.monotonic() - t0, 1)
    for what, outcome in steps.items():
        log.info("%s: %s", what, outcome)
    publish(f"wordpress-{spec.name}", f"wordpress rollout of stack {spec.name}", steps)
    return {
        "stack": spec.name,
        "changed": any(v.startswith("changed") for v in steps.values()),
        "source": wp.source_note(spec, credentials),
        "load_balancer": lb["ip"],
        "steps": steps,
        "verified": verified,
        "timings": timings,
    }
