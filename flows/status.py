"""status: what a stack looks like right now: droplets and roles, etcd health, Patroni
members (role, state, timeline, lag), HAProxy backends, WAL archiving per database droplet
(pg_stat_archiver, segments waiting) and the backup catalog. Read-only; a part that cannot
be reached is reported as such instead of failing the whole report (tasks/probes.py)."""

from __future__ import annotations

from prefect import flow, get_run_logger, unmapped

from blocks.stack import StackSpec
from tasks import etcd, haproxy, probes
from tasks.context import StackContext, opened


@flow(name="status", log_prints=False)
def stack_status(
    spec: StackSpec, credentials: str = "lab", stack: StackContext | None = None
) -> dict:
    """Droplets and roles, etcd health, Patroni members, HAProxy backends, service start
    times (systemd ActiveEnterTimestamp) and PostgreSQL start times."""
    with opened(spec, credentials, stack) as ctx:
        remote, hosts = ctx.remote, ctx.hosts
        members = {n.name: "" for n in spec.nodes_with("etcd")}
        members.update(etcd.members(ctx.with_role("etcd")))
        # Every probe at once (each droplet's commands still run one at a time on its
        # connection): the report waits for the slowest, not for the sum.
        droplets = probes.droplet_status.map(unmapped(remote), hosts)
        etcd_f = probes.etcd_status.submit(remote, ctx.with_role("etcd"), members)
        patroni_f = probes.patroni_status.submit(
            remote,
            ctx.with_role("postgres"),
            [x.name for x in spec.nodes_with("postgres")],
            spec.synchronous_mode,
        )
        ha_hosts = ctx.with_role("haproxy")
        ha_f = probes.haproxy_status.map(unmapped(remote), ha_hosts)
        backups_f = probes.backups_status.submit(ctx)
        status = {
            "stack": spec.name,
            "droplets": droplets.result(),
            "missing_droplets": [n.name for n in spec.nodes() if n.name not in ctx.hosts_by_name],
            "etcd": etcd_f.result(),
            "patroni": patroni_f.result(),
            "haproxy": dict(zip([h.name for h in ha_hosts], ha_f.result(), strict=True)),
            "backups": backups_f.result(),
        }
    status["problems"] = verdict(status)
    status["ok"] = not status["problems"]
    get_run_logger().info("stack %s: %s", spec.name, "healthy" if status["ok"] else "NOT healthy")
    return status


def verdict(status: dict) -> list[str]:
    """Why the stack is not healthy ([] when it is): droplets missing or not answering,
    etcd, Patroni, HAProxy not routing its primary port to the leader alone, and the
    backup catalog (none, unreadable, or with problems)."""
    problems = []
    if status["missing_droplets"]:
        problems.append(f"droplets missing or off: {', '.join(status['missing_droplets'])}")
    problems += [f"{d['name']}: {d['error']}" for d in status["droplets"] if "error" in d]
    for part in ("etcd", "patroni"):
        if not status[part].get("ok", False):
            found = status[part].get("problems") or [status[part].get("error", "no answer")]
            problems += [f"{part}: {p}" for p in found]
    leaders = [m["name"] for m in status["patroni"].get("members", []) if m["role"] == "leader"]
    for host, backends in status["haproxy"].items():
        if "error" in backends:
            problems.append(f"haproxy on {host}: {backends['error']}")
            continue
        up = haproxy.up_servers(backends, "primary")
        if len(leaders) == 1 and up != leaders:
            problems.append(f"haproxy on {host}: primary port routes to {up}, not {leaders}")
    backups = status["backups"]
    if "error" in backups:
        problems.append(f"backups: {backups['error']}")
    else:
        if not backups["count"]:
            problems.append("backups: none in the catalog")
        problems += [f"backups: {p}" for p in backups.get("problems", [])]
    return problems
