"""cluster: etcd, Patroni + PostgreSQL (first node bootstraps, then the replicas), HAProxy
routing by Patroni's REST checks; then verified. Idempotent: a rerun on a healthy stack
changes and restarts nothing, and the run reports each step as changed or unchanged.
A PostgreSQL parameter changed in the spec goes through Patroni's dynamic configuration;
a restart it needs is reported, and done one member at a time (replicas first) when
`restart=True`."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from blocks.credentials import SpacesCredentials
from blocks.secrets import HAPROXY_STATS, POSTGRES_SUPERUSER, cluster_secrets
from blocks.stack import StackSpec
from flows import remote as rm
from flows.remote import Remote, Secrets
from flows.report import publish
from tasks import etcd, haproxy, packages, patroni, wal
from tasks.hosts import Host
from tasks.wheelhouse import build_wheelhouse

step = task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
# Waits for a cluster to converge: retrying would only wait longer; fail with the reason.
check = task(cache_policy=NO_CACHE, retries=0)


def _outcome(changed: bool, detail: str = "") -> dict:
    return {"changed": changed, "detail": detail}


@task(cache_policy=NO_CACHE, retries=1)
def wheelhouse() -> Path:
    return build_wheelhouse()


@step
def prepare(remote: Remote, host: Host) -> dict:
    """Packages from the manifest; Debian's default PostgreSQL cluster dropped; Debian's
    default etcd / HAProxy stopped where the host has no such role."""
    done = []
    with remote.connect(host) as conn:
        if packages.install_packages(conn):
            done.append("packages installed")
        if packages.drop_default_cluster(conn):
            done.append("dropped Debian's 15/main cluster")
        if "etcd" not in host.roles and etcd.disable(conn):
            done.append("stopped unused etcd")
        if "haproxy" not in host.roles and haproxy.disable(conn):
            done.append("stopped unused haproxy")
    return _outcome(bool(done), ", ".join(done))


@step
def etcd_configure(remote: Remote, host: Host, spec: StackSpec, members: dict) -> dict:
    with remote.connect(host) as conn:
        return etcd.configure(conn, host, spec, members)


@check
def etcd_converge(remote: Remote, hosts: list[Host], configured: dict, members: dict) -> dict:
    """Start new or stopped members together (a new member's start completes only with a
    quorum); restart members whose config changed one at a time, each back to healthy
    before the next. Then: every member healthy, exactly one leader."""
    started, restarted = [], []
    for host in hosts:
        state = configured[host.name]
        if state["wiped"] or not state["active"]:
            with remote.connect(host) as conn:
                etcd.start(conn)
            started.append(host.name)
    with remote.connect(hosts[0]) as conn:
        etcd.wait_healthy(conn, members, timeout=180)
    for host in hosts:
        state = configured[host.name]
        if state["config_changed"] and host.name not in started:
            with remote.connect(host) as conn:
                etcd.restart(conn)
                etcd.wait_healthy(conn, members, timeout=120)
            restarted.append(host.name)
    with remote.connect(hosts[0]) as conn:
        health = etcd.wait_healthy(conn, members, timeout=60)
    return {"started": started, "restarted": restarted, "health": health.as_dict()}


@step
def wal_configure(remote: Remote, host: Host, spec: StackSpec, spaces: Secrets) -> bool:
    with remote.connect(host) as conn:
        return wal.configure(conn, spec, spaces.reveal())


@check
def wal_verify(remote: Remote, leader: Host) -> str:
    with remote.connect(leader) as conn:
        return wal.verify_archiving(conn)


@step
def patroni_configure(
    remote: Remote, host: Host, spec: StackSpec, etcd_ips: list, secrets: Secrets, wheels: Path
) -> dict:
    with remote.connect(host) as conn:
        return patroni.configure(conn, host, spec, etcd_ips, secrets.reveal(), wheels)


@check
def patroni_converge(
    remote: Remote, hosts: list[Host], spec: StackSpec, etcd_ips: list, configured: dict
) -> dict:
    """First run: the first postgres host bootstraps alone and must lead before the others
    start (and clone from it). Later runs: start what is stopped, reload (SIGHUP, no
    PostgreSQL restart) what got a new patroni.yml, restart (replicas first) what got a
    new unit. Ends when one leader runs and every replica streams with zero lag."""
    report = patroni.StartReport()
    first = hosts[0]
    with remote.connect(first) as conn:
        bootstrapped = patroni.initialized(conn, spec, etcd_ips)
    pending = [h for h in hosts if not configured[h.name]["active"]]
    if not bootstrapped:
        with remote.connect(first) as conn:
            if first in pending:
                patroni.start(conn)
                pending.remove(first)
            patroni.wait_primary(conn, first.private_ip, timeout=300)
        report.bootstrapped = first.name
    for host in pending:
        with remote.connect(host) as conn:
            patroni.start(conn)
        report.started.append(host.name)
    # Members that were already running before this run: new unit -> restart, new yml -> HUP.
    running = [h for h in hosts if configured[h.name]["active"]]
    for host in running:
        if configured[host.name]["config_changed"] and not configured[host.name]["unit_changed"]:
            with remote.connect(host) as conn:
                patroni.reload(conn)
            report.reloaded.append(host.name)
    to_restart = {h.name for h in running if configured[h.name]["unit_changed"]}
    expected = [h.name for h in hosts]
    if to_restart:
        with remote.connect(first) as conn:
            members = patroni.wait_healthy(
                conn, first.private_ip, expected, spec.synchronous_mode, timeout=420
            )
        by_name = {h.name: h for h in hosts}
        for name in patroni.restart_order(members, only_pending=False):
            if name not in to_restart:
                continue
            with remote.connect(by_name[name]) as conn:
                patroni.restart_service(conn)
                patroni.wait_healthy(
                    conn, first.private_ip, expected, spec.synchronous_mode, timeout=300
                )
            report.restarted.append(name)
    with remote.connect(first) as conn:
        members = patroni.wait_healthy(
            conn, first.private_ip, expected, spec.synchronous_mode, timeout=420
        )
    return {"report": report.__dict__, "members": [m.__dict__ for m in members]}


@check
def patroni_parameters(remote: Remote, hosts: list[Host], spec: StackSpec, restart: bool) -> dict:
    """Patch the DCS to the spec's dynamic configuration; wait until every member runs with
    each changed parameter or reports it pending a restart; with `restart`, restart the
    pending members one at a time, replicas first, the leader last."""
    log = get_run_logger()
    first = hosts[0]
    expected = [h.name for h in hosts]
    with remote.connect(first) as conn:
        patch = patroni.apply_dynamic(conn, spec)
    params = patroni.changed_parameters(patch)
    if patch:
        _wait_reloaded(remote, hosts, spec, {k: v for k, v in params.items() if v is not None})
    members = _live_pending(remote, hosts)
    pending = [m.name for m in members if m.pending_restart]
    restarted = []
    if pending and restart:
        by_name = {h.name: h for h in hosts}
        for name in patroni.restart_order(members):
            with remote.connect(by_name[name]) as conn:
                log.info("restarting %s (pending restart)", name)
                patroni.restart_member(conn, spec, name)
                patroni.wait_healthy(
                    conn, first.private_ip, expected, spec.synchronous_mode, timeout=300
                )
            restarted.append(name)
        pending = [m.name for m in _live_pending(remote, hosts) if m.pending_restart]
    elif pending:
        log.warning(
            "PostgreSQL restart pending on %s: rerun with restart=True to restart them one at "
            "a time, replicas first",
            ", ".join(pending),
        )
    return {
        "dcs_changed": sorted(_flatten(patch)),
        "parameters": params,
        "pending_restart": pending,
        "restarted": restarted,
    }


def _wait_reloaded(remote: Remote, hosts: list[Host], spec: StackSpec, wanted: dict) -> None:
    """Wait until every member has taken the new DCS configuration: each parameter with a
    value in effect or pending a restart, and two Patroni loops gone by (a value that was
    already in effect, or a removed parameter, says nothing about whether Patroni has
    reloaded and recomputed pending_restart yet)."""
    now = time.monotonic()
    deadline = now + 20 + 4 * spec.patroni.loop_wait
    settle = now + 2 * spec.patroni.loop_wait + 2
    late: dict[str, list[str]] = {}
    for host in hosts:
        with remote.connect(host) as conn:
            while True:
                pending = patroni.member_info(conn, host.private_ip)["pending_restart"]
                states = patroni.parameter_states(conn, wanted, pending)
                waiting = [p for p, st in states.items() if st == "waiting"]
                if (not waiting and time.monotonic() >= settle) or time.monotonic() > deadline:
                    break
                time.sleep(1)
        if waiting:
            late[host.name] = waiting
    if late:
        raise patroni.PatroniError(f"parameters not applied after the DCS change: {late}")


def _live_pending(remote: Remote, hosts: list[Host]) -> list[patroni.Member]:
    """Members with roles from /cluster and pending_restart from each member's own
    GET /patroni (the copy in the DCS lags by up to a loop)."""
    with remote.connect(hosts[0]) as conn:
        members = patroni.cluster(conn, hosts[0].private_ip)
    live = {}
    for host in hosts:
        with remote.connect(host) as conn:
            live[host.name] = patroni.member_info(conn, host.private_ip)["pending_restart"]
    return [dataclasses.replace(m, pending_restart=live.get(m.name, False)) for m in members]


def _flatten(patch: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in patch.items():
        if isinstance(value, dict):
            keys += _flatten(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


@step
def haproxy_configure(
    remote: Remote, host: Host, spec: StackSpec, postgres_nodes: dict, secrets: Secrets
) -> dict:
    with remote.connect(host) as conn:
        return haproxy.configure(conn, host, spec, postgres_nodes, secrets[HAPROXY_STATS])


@check
def haproxy_verify(
    remote: Remote, host: Host, spec: StackSpec, leader: str, replicas: list, secrets: Secrets
) -> dict:
    """Backends as Patroni says they should be, then real connections through the ports."""
    with remote.connect(host) as conn:
        backends = haproxy.wait_backends(conn, leader, replicas, timeout=60)
        haproxy.place_pgpass(conn, spec, secrets[POSTGRES_SUPERUSER])
        routing = haproxy.verify_routing(conn, spec, replicas=bool(replicas))
    return {"backends": backends, "routing": routing}


def _on(label: str, names: list[str]) -> str:
    return f"{label} {', '.join(names)}" if names else ""


def _changes(*parts: str) -> str:
    """A step's outcome: "changed: what; what" or "unchanged"."""
    done = [p for p in parts if p]
    return "changed: " + "; ".join(done) if done else "unchanged"


def _by_name(hosts: list[Host], results: list) -> dict:
    return dict(zip([h.name for h in hosts], results, strict=True))


@flow(name="cluster", log_prints=False)
def cluster(spec: StackSpec, credentials: str = "lab", restart: bool = False) -> dict:
    """etcd, Patroni + PostgreSQL and HAProxy on the stack's droplets, then verified."""
    log = get_run_logger()
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    hosts, remote = rm.load(spec, credentials)
    secrets = Secrets(cluster_secrets(spec.name))
    etcd_hosts = [h for h in hosts if "etcd" in h.roles]
    pg_hosts = [h for h in hosts if "postgres" in h.roles]
    ha_hosts = [h for h in hosts if "haproxy" in h.roles]
    members = etcd.members(etcd_hosts)
    etcd_ips = list(members.values())
    pg_nodes = {h.name: h.private_ip for h in pg_hosts}
    steps: dict[str, str] = {}
    details: dict[str, object] = {}

    def lap(name: str, since: float) -> float:
        now = time.monotonic()
        timings[name] = round(now - since, 1)
        return now

    try:
        wheels = wheelhouse.submit()
        t = time.monotonic()
        prepared = prepare.map(unmapped(remote), hosts).result()
        steps["packages"] = _changes(
            *(
                f"{h.name} ({r['detail']})"
                for h, r in zip(hosts, prepared, strict=True)
                if r["changed"]
            )
        )
        t = lap("packages", t)

        # HAProxy does not need the database up: configure it meanwhile.
        ha_futures = haproxy_configure.map(
            unmapped(remote), ha_hosts, unmapped(spec), unmapped(pg_nodes), unmapped(secrets)
        )

        futures = etcd_configure.map(
            unmapped(remote), etcd_hosts, unmapped(spec), unmapped(members)
        )
        configured = _by_name(etcd_hosts, futures.result())
        ec = etcd_converge(remote, etcd_hosts, configured, members)
        details["etcd"] = ec
        steps["etcd"] = _changes(
            _on("formed from", [n for n, c in configured.items() if c["wiped"]]),
            _on("config on", [n for n, c in configured.items() if c["config_changed"]]),
            _on("started", ec["started"]),
            _on("restarted", ec["restarted"]),
        )
        t = lap("etcd", t)

        # The WAL agent first: Patroni's PostgreSQL archives through it from its first segment.
        spaces = SpacesCredentials.load(credentials)
        spaces_settings = Secrets(
            {
                "endpoint": spaces.endpoint,
                "region": spaces.region,
                "access_key": spaces.access_key.get_secret_value(),
                "secret_key": spaces.secret_key.get_secret_value(),
            }
        )
        futures = wal_configure.map(
            unmapped(remote), pg_hosts, unmapped(spec), unmapped(spaces_settings)
        )
        steps["wal agent"] = _changes(
            _on("configured on", [n for n, c in _by_name(pg_hosts, futures.result()).items() if c])
        )
        t = lap("wal agent", t)

        futures = patroni_configure.map(
            unmapped(remote),
            pg_hosts,
            unmapped(spec),
            unmapped(etcd_ips),
            unmapped(secrets),
            unmapped(wheels.result()),
        )
        pc = _by_name(pg_hosts, futures.result())
        pg = patroni_converge(remote, pg_hosts, spec, etcd_ips, pc)
        details["patroni"] = pg
        rep = pg["report"]
        steps["patroni"] = _changes(
            _on("installed on", [n for n, c in pc.items() if c["installed"]]),
            _on("bootstrapped on", [rep["bootstrapped"]] if rep["bootstrapped"] else []),
            _on(
                "config on", [n for n, c in pc.items() if c["config_changed"] or c["unit_changed"]]
            ),
            _on("started", rep["started"]),
            _on("reloaded", rep["reloaded"]),
            _on("restarted", rep["restarted"]),
        )
        t = lap("patroni", t)

        params = patroni_parameters(remote, pg_hosts, spec, restart)
        details["parameters"] = params
        steps["parameters"] = _changes(
            _on("DCS", params["dcs_changed"]), _on("restarted", params["restarted"])
        )
        if params["pending_restart"]:
            steps["parameters"] += (
                f" (PENDING RESTART on {', '.join(params['pending_restart'])}: "
                "rerun with restart=True)"
            )
        t = lap("parameters", t)

        ha = _by_name(ha_hosts, ha_futures.result())
        steps["haproxy"] = _changes(
            _on("started", [n for n, r in ha.items() if r["started"]]),
            _on("reloaded", [n for n, r in ha.items() if r["reloaded"]]),
        )

        # Verify what we promised, against the cluster as it is now.
        with remote.connect(pg_hosts[0]) as conn:
            final = patroni.wait_healthy(
                conn, pg_hosts[0].private_ip, list(pg_nodes), spec.synchronous_mode, timeout=120
            )
        leader = next(m for m in final if m.is_leader)
        replicas = sorted(m.name for m in final if not m.is_leader)
        futures = haproxy_verify.map(
            unmapped(remote),
            ha_hosts,
            unmapped(spec),
            unmapped(leader.name),
            unmapped(replicas),
            unmapped(secrets),
        )
        details["haproxy"] = _by_name(ha_hosts, futures.result())
        t = lap("haproxy", t)
        by_name = {h.name: h for h in pg_hosts}
        details["wal archived"] = wal_verify(remote, by_name[leader.name])
        lap("wal archive", t)
        with remote.connect(etcd_hosts[0]) as conn:
            etcd_health = etcd.check(conn, members)
        if not etcd_health.ok:
            raise etcd.EtcdError(f"etcd after the run: {'; '.join(etcd_health.problems)}")
    finally:
        pinned = rm.save_pins(credentials, remote)
        if pinned:
            log.info("pinned %d new SSH host key(s) in block %r", pinned, credentials)

    timings["total"] = round(time.monotonic() - t0, 1)
    etcd_leader = next(m["name"] for m in etcd_health.members if m["leader"])
    verification = {
        "etcd": f"{len(members)} members healthy, one leader ({etcd_leader})",
        "patroni": f"one leader ({leader.name}, timeline {leader.timeline}); streaming with "
        f"zero lag on that timeline: {', '.join(replicas) or 'none'}",
        "haproxy": f":{spec.haproxy.primary_port} read-write, :{spec.haproxy.replica_port} "
        f"read-only, through {', '.join(h.name for h in ha_hosts)}",
        "wal archive": f"segment {details['wal archived']} archived to Spaces bucket "
        f"{spec.bucket} through the WAL agent on {leader.name}",
    }
    for what, outcome in steps.items():
        log.info("%s: %s", what, outcome)
    publish(f"cluster-{spec.name}", f"cluster runbook of stack {spec.name}", steps)
    create_markdown_artifact(
        key=f"cluster-{spec.name}-verified",
        markdown=_markdown(spec, steps, verification, timings),
        description=f"cluster of stack {spec.name}: verified",
    )
    return {
        "stack": spec.name,
        "changed": any(v.startswith("changed") for v in steps.values()),
        "steps": steps,
        "verified": verification,
        "pending_restart": params["pending_restart"],
        "timings": timings,
        "details": details,
    }


def _markdown(spec: StackSpec, steps: dict, verification: dict, timings: dict) -> str:
    lines = [f"# cluster: {spec.name}", "", "| step | outcome | seconds |", "|---|---|---|"]
    lines += [f"| {s} | {o} | {timings.get(s, '')} |" for s, o in steps.items()]
    lines += ["", "## verified", ""]
    lines += [f"- **{k}**: {v}" for k, v in verification.items()]
    lines += ["", f"total: {timings.get('total')} s"]
    return "\n".join(lines)
