"""cluster: etcd, Patroni + PostgreSQL (first node bootstraps, then the replicas), HAProxy
routing by Patroni's REST checks; then verified. Idempotent: a rerun on a healthy stack
changes and restarts nothing, and the run reports each step as changed or unchanged.
A PostgreSQL parameter changed in the spec goes through Patroni's dynamic configuration;
a restart it needs is reported, and done one member at a time (replicas first) when
`restart=True`."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.futures import PrefectFutureList

from blocks.stack import StackSpec
from flows.report import publish
from tasks import etcd, events, haproxy, patroni, wal
from tasks.context import StackContext, opened
from tasks.hosts import Host
from tasks.packages import prepare
from tasks.pitr import RestorePoint
from tasks.wheelhouse import wheelhouse


class _Run:
    """What the run reports: each step's outcome, details and seconds."""

    def __init__(self) -> None:
        self.steps: dict[str, str] = {}
        self.details: dict[str, object] = {}
        self.timings: dict[str, float] = {}
        self.t0 = self.t = time.monotonic()
        self.etcd_members = 0

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.timings[name] = round(now - self.t, 1)
        self.t = now


def _on(label: str, names: list[str]) -> str:
    return f"{label} {', '.join(names)}" if names else ""


def _changes(*parts: str) -> str:
    """A step's outcome: "changed: what; what" or "unchanged"."""
    done = [p for p in parts if p]
    return "changed: " + "; ".join(done) if done else "unchanged"


def _by_name(hosts: list[Host], results: list) -> dict:
    return dict(zip([h.name for h in hosts], results, strict=True))


@flow(name="cluster", log_prints=False)
def cluster(
    spec: StackSpec,
    credentials: str = "lab",
    restart: bool = False,
    stack: StackContext | None = None,
    restore: RestorePoint | None = None,
) -> dict:
    """etcd, Patroni + PostgreSQL and HAProxy on the stack's droplets, then verified.
    `stack`: the context of a parent flow (`up`); without it, one is opened here.
    `restore`: a new cluster bootstraps from another stack's backups (tasks/pitr.py);
    ignored once the cluster exists."""
    with opened(spec, credentials, stack) as ctx:
        ctx.require_complete()
        run = _Run()
        remote, secrets = ctx.remote, ctx.cluster_secrets
        wheels = wheelhouse.submit()
        prepared = _by_name(ctx.hosts, prepare.map(unmapped(remote), ctx.hosts).result())
        run.steps["packages"] = _changes(
            *(f"{n} ({r['detail']})" for n, r in prepared.items() if r["changed"])
        )
        run.lap("packages")
        # HAProxy does not need the database up: configure it meanwhile.
        pg_nodes = {h.name: h.private_ip for h in ctx.with_role("postgres")}
        ha_futures = haproxy.configure_member.map(
            unmapped(remote),
            ctx.with_role("haproxy"),
            unmapped(spec),
            unmapped(pg_nodes),
            unmapped(secrets),
        )
        members = _etcd(ctx, run)
        if restore is not None and _initialized(ctx, list(members.values())):
            restore = None
        _wal_agent(ctx, run, restore)
        _patroni(ctx, run, list(members.values()), wheels.result(), restore)
        params = _parameters(ctx, run, restart)
        leader, replicas = _haproxy(ctx, run, ha_futures)
        run.details["wal archived"] = wal.verify(remote, ctx.host(leader.name))
        run.lap("wal archive")
        etcd_health = etcd.verify(remote, ctx.with_role("etcd")[0], members)
    return _report(spec, ctx, run, params, leader, replicas, etcd_health)


def _etcd(ctx: StackContext, run: _Run) -> dict[str, str]:
    etcd_hosts = ctx.with_role("etcd")
    members = etcd.members(etcd_hosts)
    joining = etcd.admit(ctx.remote, etcd_hosts, ctx.spec, members)
    futures = etcd.configure_member.map(
        unmapped(ctx.remote), etcd_hosts, unmapped(ctx.spec), unmapped(members), unmapped(joining)
    )
    configured = _by_name(etcd_hosts, futures.result())
    ec = etcd.converge(ctx.remote, etcd_hosts, configured, members)
    run.details["etcd"] = ec
    run.steps["etcd"] = _changes(
        _on("joined by", sorted(joining)),
        _on("formed from", [n for n, c in configured.items() if c["wiped"] and not joining]),
        _on("config on", [n for n, c in configured.items() if c["config_changed"]]),
        _on("started", ec["started"]),
        _on("restarted", ec["restarted"]),
    )
    run.lap("etcd")
    run.etcd_members = len(members)
    return members


def _initialized(ctx: StackContext, etcd_ips: list[str]) -> bool:
    with ctx.remote.connect(ctx.with_role("postgres")[0]) as conn:
        return patroni.initialized(conn, ctx.spec, etcd_ips)


def _wal_agent(ctx: StackContext, run: _Run, restore: RestorePoint | None) -> None:
    """The WAL agent first: Patroni's PostgreSQL archives through it from its first segment
    (and a restore's bootstrap fetches the source's WAL through it)."""
    pg_hosts = ctx.with_role("postgres")
    futures = wal.configure_member.map(
        unmapped(ctx.remote),
        pg_hosts,
        unmapped(ctx.spec),
        unmapped(ctx.spaces_settings()),
        unmapped(restore),
    )
    configured = _by_name(pg_hosts, futures.result())
    run.steps["wal agent"] = _changes(_on("configured on", [n for n, c in configured.items() if c]))
    run.lap("wal agent")
    # Before Patroni too: its first promotion is an event.
    futures = events.configure_member.map(unmapped(ctx.remote), pg_hosts, unmapped(ctx.spec))
    configured = _by_name(pg_hosts, futures.result())
    run.steps["events"] = _changes(_on("configured on", [n for n, c in configured.items() if c]))
    run.lap("events")


def _patroni(
    ctx: StackContext,
    run: _Run,
    etcd_ips: list[str],
    wheels: object,
    restore: RestorePoint | None,
) -> None:
    pg_hosts = ctx.with_role("postgres")
    peers = {role: [h.private_ip for h in ctx.with_role(role)] for role in ("postgres", "haproxy")}
    futures = patroni.configure_member.map(
        unmapped(ctx.remote),
        pg_hosts,
        unmapped(ctx.spec),
        unmapped(etcd_ips),
        unmapped(ctx.cluster_secrets),
        unmapped(wheels),
        unmapped(peers),
        unmapped(restore),
    )
    pc = _by_name(pg_hosts, futures.result())
    pg = patroni.converge(ctx.remote, pg_hosts, ctx.spec, etcd_ips, pc)
    run.details["patroni"] = pg
    rep = pg["report"]
    run.steps["patroni"] = _changes(
        _on("installed on", [n for n, c in pc.items() if c["installed"]]),
        _on("bootstrapped on", [rep["bootstrapped"]] if rep["bootstrapped"] else []),
        _on("config on", [n for n, c in pc.items() if c["config_changed"] or c["unit_changed"]]),
        _on("started", rep["started"]),
        _on("reloaded", rep["reloaded"]),
        _on("switched over", [rep["switched_over"]] if rep["switched_over"] else []),
        _on("restarted", rep["restarted"]),
    )
    run.lap("patroni")


def _parameters(ctx: StackContext, run: _Run, restart: bool) -> dict:
    params = patroni.apply_parameters(ctx.remote, ctx.with_role("postgres"), ctx.spec, restart)
    run.details["parameters"] = params
    run.steps["parameters"] = _changes(
        _on("DCS", params["dcs_changed"]),
        _on("switched over", [params["switched_over"]] if params["switched_over"] else []),
        _on("restarted", params["restarted"]),
    )
    if params["pending_restart"]:
        run.steps["parameters"] += (
            f" (PENDING RESTART on {', '.join(params['pending_restart'])}: rerun with restart=True)"
        )
    run.lap("parameters")
    return params


def _haproxy(
    ctx: StackContext, run: _Run, configured: PrefectFutureList
) -> tuple[patroni.Member, list[str]]:
    """HAProxy's outcome, then what we promised, checked against the cluster as it is now."""
    ha_hosts = ctx.with_role("haproxy")
    ha = _by_name(ha_hosts, configured.result())
    final = patroni.verify(ctx.remote, ctx.with_role("postgres"), ctx.spec)
    leader = next(m for m in final if m.is_leader)
    replicas = sorted(m.name for m in final if not m.is_leader)
    # The role HAProxy droplets check routing as (never the superuser), on the primary.
    role = haproxy.routing_role(ctx.remote, ctx.host(leader.name), ctx.cluster_secrets)
    run.steps["haproxy"] = _changes(
        _on("started", [n for n, r in ha.items() if r["started"]]),
        _on("reloaded", [n for n, r in ha.items() if r["reloaded"]]),
        *role,
    )
    futures = haproxy.verify.map(
        unmapped(ctx.remote),
        ha_hosts,
        unmapped(ctx.spec),
        unmapped(leader.name),
        unmapped(replicas),
        unmapped(ctx.cluster_secrets),
    )
    run.details["haproxy"] = _by_name(ha_hosts, futures.result())
    run.lap("haproxy")
    return leader, replicas


def _report(
    spec: StackSpec,
    ctx: StackContext,
    run: _Run,
    params: dict,
    leader: patroni.Member,
    replicas: list[str],
    etcd_health: etcd.EtcdHealth,
) -> dict:
    log = get_run_logger()
    run.timings["total"] = round(time.monotonic() - run.t0, 1)
    etcd_leader = next(m["name"] for m in etcd_health.members if m["leader"])
    ha_hosts = ctx.with_role("haproxy")
    verification = {
        "etcd": f"{run.etcd_members} members healthy, one leader ({etcd_leader})",
        "patroni": f"one leader ({leader.name}, timeline {leader.timeline}); streaming with "
        f"zero lag on that timeline: {', '.join(replicas) or 'none'}",
        "haproxy": f":{spec.haproxy.primary_port} read-write, :{spec.haproxy.replica_port} "
        f"read-only, through {', '.join(h.name for h in ha_hosts)}",
        "wal archive": f"segment {run.details['wal archived']} archived to Spaces bucket "
        f"{spec.bucket} through the WAL agent on {leader.name}",
    }
    for what, outcome in run.steps.items():
        log.info("%s: %s", what, outcome)
    publish(f"cluster-{spec.name}", f"cluster runbook of stack {spec.name}", run.steps)
    create_markdown_artifact(
        key=f"cluster-{spec.name}-verified",
        markdown=_markdown(spec, run.steps, verification, run.timings),
        description=f"cluster of stack {spec.name}: verified",
    )
    return {
        "stack": spec.name,
        "changed": any(v.startswith("changed") for v in run.steps.values()),
        "steps": run.steps,
        "verified": verification,
        "pending_restart": params["pending_restart"],
        "timings": run.timings,
        "details": run.details,
    }


def _markdown(spec: StackSpec, steps: dict, verification: dict, timings: dict) -> str:
    lines = [f"# cluster: {spec.name}", "", "| step | outcome | seconds |", "|---|---|---|"]
    lines += [f"| {s} | {o} | {timings.get(s, '')} |" for s, o in steps.items()]
    lines += ["", "## verified", ""]
    lines += [f"- **{k}**: {v}" for k, v in verification.items()]
    lines += ["", f"total: {timings.get('total')} s"]
    return "\n".join(lines)
