"""Patroni + PostgreSQL on the postgres droplets: install, configure, bootstrap in order,
verify, change dynamic configuration, restart one member at a time.

Patroni's REST API listens on the private address only (the cloud firewall admits the VPC,
not the orchestrator), so every query runs on a droplet over SSH: `curl` for the open
GET endpoints, `patronictl` (which reads the REST credentials from patroni.yml) for the
protected ones. No password ever appears on a command line.
"""

from __future__ import annotations

import json
import shlex
import time
from contextlib import suppress
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from fabric import Connection
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks.stack import ROUTING_ROLE, StackSpec
from lifeboat.waiting import NotYet, WaitTimeout, wait_until
from tasks import curl, guc, sql
from tasks.etcd import ETCDCTL, endpoints
from tasks.hosts import Host, put, run
from tasks.render import DESTINATIONS, render
from tasks.wheelhouse import VENV, install_patroni

if TYPE_CHECKING:
    from tasks.context import Remote, Secrets
    from tasks.pitr import RestorePoint

CONFIG = DESTINATIONS["patroni/patroni.yml.j2"][0]
UNIT = DESTINATIONS["patroni/patroni.service.j2"][0]
NAMESPACE = "/lifeboat/"  # patroni.yml.j2's `namespace`
PATRONICTL = f"{VENV}/bin/patronictl -c {CONFIG}"
REST_PORT = 8008
PATCH_FILE = "/root/lifeboat-dcs-patch.json"


class PatroniError(RuntimeError):
    pass


def render_config(
    spec: StackSpec,
    host: Host,
    etcd_ips: list[str],
    passwords: dict,
    peers: dict[str, list[str]],
    restore: RestorePoint | None = None,
) -> str:
    """`peers`: the private addresses of the "postgres" and "haproxy" droplets (pg_hba
    admits each role from its own droplets only). `restore`: bootstrap from another
    stack's backups (tasks/pitr.py) instead of initdb."""
    return render(
        "patroni/patroni.yml.j2",
        spec=spec,
        name=host.name,
        address=host.private_ip,
        etcd_hosts=etcd_ips,
        passwords=passwords,
        peers=peers,
        routing_role=ROUTING_ROLE,
        restore=restore,
    )


def desired_dynamic(spec: StackSpec) -> dict[str, Any]:
    """The dynamic (DCS) configuration the spec asks for: patroni.yml's bootstrap.dcs, so
    the template stays the one place that defines it. Passwords do not appear there."""
    dummy = Host("x", 0, "192.0.2.1", "192.0.2.1")
    peers = {"postgres": ["192.0.2.1"], "haproxy": ["192.0.2.2"]}
    text = render_config(spec, dummy, ["192.0.2.1"], _NO_PASSWORDS, peers)
    return yaml.safe_load(text)["bootstrap"]["dcs"]


class _NoPasswords(dict):
    def __missing__(self, key: str) -> str:
        return "unused"


_NO_PASSWORDS = _NoPasswords()


# --- install and configure ---------------------------------------------------------------


def configure(
    conn: Connection,
    host: Host,
    spec: StackSpec,
    etcd_ips: list[str],
    passwords: dict[str, str],
    wheels: Path,
    peers: dict[str, list[str]],
    restore: RestorePoint | None = None,
) -> dict[str, bool]:
    """Install Patroni and place its config and unit; starts nothing.
    Returns {"installed", "config_changed", "unit_changed", "active"}."""
    installed = install_patroni(conn, wheels)
    # pg_dropcluster may leave no version directory; Patroni's initdb needs its parent.
    version = spec.postgres.version
    run(conn, f"install -d -o postgres -g postgres -m 0755 /var/lib/postgresql/{version}")
    path, owner, mode = DESTINATIONS["patroni/patroni.yml.j2"]
    config = render_config(spec, host, etcd_ips, passwords, peers, restore)
    config_changed = put(conn, path, config, mode, owner)
    path, owner, mode = DESTINATIONS["patroni/patroni.service.j2"]
    unit_changed = put(conn, path, render("patroni/patroni.service.j2"), mode, owner)
    if unit_changed:
        run(conn, "systemctl daemon-reload", timeout=60)
    run(conn, "systemctl enable --quiet patroni", timeout=60)
    return {
        "installed": installed,
        "config_changed": config_changed,
        "unit_changed": unit_changed,
        "active": is_active(conn),
    }


def is_active(conn: Connection) -> bool:
    return run(conn, "systemctl is-active --quiet patroni", warn=True, timeout=30).ok


def start(conn: Connection) -> None:
    run(conn, "systemctl start patroni", timeout=60)


def reload(conn: Connection) -> None:
    """SIGHUP: Patroni rereads patroni.yml without restarting PostgreSQL."""
    run(conn, "systemctl reload patroni", timeout=60)


def restart_service(conn: Connection) -> None:
    """Restart Patroni itself (a new unit file); it stops PostgreSQL cleanly first."""
    run(conn, "systemctl restart patroni", timeout=180)


def initialized(conn: Connection, spec: StackSpec, etcd_ips: list[str]) -> bool:
    """Has a Patroni cluster of this scope ever been bootstrapped (its initialize key)?"""
    key = shlex.quote(f"{NAMESPACE}{spec.name}/initialize")
    res = run(
        conn,
        f"{ETCDCTL} --endpoints={endpoints(etcd_ips)} get {key} --print-value-only",
        timeout=30,
    )
    return bool(res.stdout.strip())


# --- REST API (open GET endpoints) -------------------------------------------------------


def _get(conn: Connection, ip: str, path: str) -> curl.Answer:
    return curl.get(conn, f"http://{ip}:{REST_PORT}{path}", max_time=5, timeout=20)


def get_json(conn: Connection, ip: str, path: str) -> dict | None:
    return _get(conn, ip, path).json()


def is_primary(conn: Connection, ip: str) -> bool:
    return _get(conn, ip, "/primary").status == 200


def wait_primary(conn: Connection, ip: str, timeout: float = 300) -> None:
    try:
        wait_until(f"{ip} to become the primary", lambda: is_primary(conn, ip), timeout, every=2)
    except WaitTimeout as e:
        state = get_json(conn, ip, "/patroni") or {}
        raise PatroniError(
            f"{ip} did not become the primary within {timeout:.0f}s "
            f"(state {state.get('state', 'unknown')!r}); see `journalctl -u patroni`"
        ) from e


# --- the cluster as Patroni reports it -------------------------------------------------


@dataclass(frozen=True)
class Member:
    name: str
    role: str
    state: str
    host: str = ""
    timeline: int | None = None
    lag: int | None = None  # bytes behind the leader; None when unknown
    pending_restart: bool = False

    @property
    def is_leader(self) -> bool:
        return self.role in ("leader", "standby_leader")


def _lag(value: Any) -> int | None:
    return value if isinstance(value, int) else None


def parse_cluster(data: dict) -> list[Member]:
    """Members from Patroni's GET /cluster."""
    members = []
    for m in data.get("members", []):
        lags = [_lag(m.get(k)) for k in ("lag", "receive_lag", "replay_lag") if k in m]
        lag = None if any(x is None for x in lags) else max(lags, default=0)
        members.append(
            Member(
                name=m["name"],
                role=m.get("role", ""),
                state=m.get("state", ""),
                host=m.get("host", ""),
                timeline=m.get("timeline"),
                lag=None if m.get("role") == "leader" else lag,
                pending_restart=bool(m.get("pending_restart")),
            )
        )
    return members


def assess_cluster(
    members: list[Member], expected: list[str], synchronous: bool, max_lag: int = 0
) -> list[str]:
    """What stops this cluster from being what we promised: exactly one leader, running;
    every other expected member streaming with lag <= max_lag on the leader's timeline;
    with synchronous replication, a synchronous standby. Empty when healthy."""
    problems = []
    by_name = {m.name: m for m in members}
    missing = [n for n in expected if n not in by_name]
    if missing:
        problems.append(f"not in the cluster: {', '.join(missing)}")
    extra = sorted(set(by_name) - set(expected))
    if extra:
        problems.append(f"unexpected members: {', '.join(extra)}")
    leaders = [m for m in members if m.is_leader]
    if len(leaders) != 1:
        problems.append(f"{len(leaders)} leaders ({', '.join(m.name for m in leaders) or 'none'})")
        return problems
    leader = leaders[0]
    if leader.state != "running":
        problems.append(f"leader {leader.name} is {leader.state!r}, not running")
    for m in members:
        if m is leader:
            continue
        if m.state != "streaming":
            problems.append(f"{m.name} is {m.state!r}, not streaming")
        if m.timeline != leader.timeline:
            problems.append(f"{m.name} is on timeline {m.timeline}, leader on {leader.timeline}")
        if m.lag is None or m.lag > max_lag:
            problems.append(f"{m.name} lags {m.lag if m.lag is not None else 'unknown'} bytes")
    if synchronous and len(expected) > 1 and not any(m.role == "sync_standby" for m in members):
        problems.append("no synchronous standby although replication is synchronous")
    return problems


def cluster(conn: Connection, *ips: str) -> list[Member]:
    """/cluster from the first of `ips` whose Patroni answers with members: a member
    that is stopped or has just started (its REST API up before it has read the DCS)
    answers nothing or an empty list, and must not read as "no cluster"."""
    for ip in ips:
        data = get_json(conn, ip, "/cluster")
        members = parse_cluster(data) if data else []
        if members:
            return members
    return []


def live_lags(conn: Connection, members: list[Member]) -> dict[str, int | None]:
    """Bytes each replica has still to replay, read live: the leader's WAL position first
    (GET /patroni asks PostgreSQL at once), then each replica's replayed position. Zero
    means "has replayed everything the primary had written when we asked", the meaning
    of "caught up" here. /cluster's own `lag` compares positions each member publishes to
    the DCS once per loop_wait, so right after a burst of WAL (a backup, a WAL switch) it
    shows megabytes of lag on replicas that are level (issue 15)."""
    leader = next((m for m in members if m.is_leader), None)
    position = _xlog(conn, leader.host, "location") if leader and leader.host else None
    lags: dict[str, int | None] = {}
    for m in members:
        if m is leader:
            continue
        replayed = _xlog(conn, m.host, "replayed_location") if m.host else None
        ok = position is not None and replayed is not None
        lags[m.name] = max(0, position - replayed) if ok else None
    return lags


def _xlog(conn: Connection, ip: str, key: str) -> int | None:
    value = ((get_json(conn, ip, "/patroni") or {}).get("xlog") or {}).get(key)
    return value if isinstance(value, int) else None


def with_live_lag(conn: Connection, members: list[Member]) -> list[Member]:
    """`members` with each replica's lag replaced by its live lag (see `live_lags`)."""
    lags = live_lags(conn, members)
    return [m if m.name not in lags else replace(m, lag=lags[m.name]) for m in members]


def wait_healthy(
    conn: Connection, ips: list[str], expected: list[str], synchronous: bool, timeout: float = 300
) -> list[Member]:
    """Poll /cluster (asking the members at `ips` in turn) until `assess_cluster` finds
    nothing wrong, with every replica caught up by its live lag."""

    def healthy() -> list[Member]:
        members = cluster(conn, *ips)
        if members:
            members = with_live_lag(conn, members)
        problems = assess_cluster(members, expected, synchronous)
        if problems:
            raise NotYet("; ".join(problems))
        return members

    try:
        return wait_until("a healthy Patroni cluster", healthy, timeout=timeout, every=1)
    except WaitTimeout as e:
        raise PatroniError(f"Patroni cluster not healthy after {timeout:.0f}s: {e.last}") from e


def restart_order(members: list[Member], only_pending: bool = True) -> list[str]:
    """Members to restart, one at a time: replicas first (asynchronous ones, then the
    synchronous standby, so a synchronous standby is there while the others restart),
    the leader last. Patroni starts a replica with at least the primary's values of
    max_connections & co. (from pg_controldata), so replicas first is safe both ways."""
    chosen = [m for m in members if m.pending_restart or not only_pending]
    replicas = sorted(
        (m for m in chosen if not m.is_leader), key=lambda m: (m.role == "sync_standby", m.name)
    )
    return [m.name for m in replicas] + [m.name for m in chosen if m.is_leader]


def switchover(conn: Connection, spec: StackSpec, leader: str, candidate: str) -> None:
    """A planned switchover; PatroniError with patronictl's words when Patroni refused it
    (patronictl exits 0 then: "Switchover failed, details: 412, ..."). "Status unknown"
    is not a refusal: the caller waits for the new leader."""
    res = run(
        conn,
        f"{PATRONICTL} switchover {shlex.quote(spec.name)} --leader "
        f"{shlex.quote(leader)} --candidate {shlex.quote(candidate)} --force",
        warn=True,
        timeout=120,
    )
    said = (res.stdout + res.stderr).strip()
    if not res.ok or ("failed" in said.lower() and "Successfully switched over" not in said):
        raise PatroniError(f"switchover {leader} -> {candidate} refused: {said[-500:]}")


def restart_member(conn: Connection, spec: StackSpec, name: str) -> None:
    """Restart one member's PostgreSQL through its REST API (POST /restart waits for it)."""
    res = run(
        conn,
        f"{PATRONICTL} restart {shlex.quote(spec.name)} {shlex.quote(name)} --force",
        warn=True,
        timeout=300,
    )
    if f"Success: restart on member {name}" not in res.stdout:
        raise PatroniError(f"restart of {name} failed: {(res.stdout + res.stderr).strip()}")


# --- dynamic configuration ---------------------------------------------------------------


def _same(a: Any, b: Any) -> bool:
    # Patroni compares str() forms too (patch_config): 100 == "100", True == "True".
    if isinstance(a, bool) or isinstance(b, bool):
        return str(a).lower() == str(b).lower()
    return str(a) == str(b)


def config_patch(current: dict, desired: dict) -> dict:
    """The PATCH that makes the DCS config `current` carry everything in `desired`.
    PostgreSQL parameters not in `desired` are removed (None): the spec owns them. Other
    keys Patroni or an operator set (pause, standby_cluster, ...) are left alone."""
    patch: dict[str, Any] = {}
    for key, want in desired.items():
        have = current.get(key)
        if isinstance(want, dict):
            sub = config_patch(have if isinstance(have, dict) else {}, want)
            if key == "parameters" and isinstance(have, dict):
                sub.update({k: None for k in have if k not in want})
            if sub:
                patch[key] = sub
        elif key not in current or not _same(have, want):
            patch[key] = want
    return patch


def changed_parameters(patch: dict) -> dict[str, Any]:
    return dict(patch.get("postgresql", {}).get("parameters", {}))


def dcs_config(conn: Connection) -> dict:
    """The dynamic configuration as stored in the DCS now (GET /config answers from
    Patroni's cached view, which lags an edit by up to a loop)."""
    res = run(conn, f"{PATRONICTL} show-config", warn=True, timeout=60)
    data = yaml.safe_load(res.stdout) if res.ok else None
    if not isinstance(data, dict):
        raise PatroniError(f"patronictl show-config failed: {(res.stderr or res.stdout).strip()}")
    return data


def apply_dynamic(conn: Connection, spec: StackSpec) -> dict:
    """Bring the DCS configuration in line with the spec (through `patronictl edit-config`,
    which writes the DCS with a compare-and-set); returns the patch applied ({} if none)."""
    current = dcs_config(conn)
    patch = config_patch(current, desired_dynamic(spec))
    if not patch:
        return {}
    put(conn, PATCH_FILE, json.dumps(patch, sort_keys=True), "0600", "root:root")
    res = run(conn, f"{PATRONICTL} edit-config --force --quiet --apply {PATCH_FILE}", warn=True)
    if not res.ok:
        raise PatroniError(f"patronictl edit-config failed: {(res.stderr or res.stdout).strip()}")
    after = dcs_config(conn)
    left = config_patch(after, desired_dynamic(spec))
    if left:
        raise PatroniError(f"the DCS configuration still differs after the edit: {left}")
    return patch


def parameter_states(conn: Connection, params: dict[str, Any], pending: bool) -> dict[str, str]:
    """For one member: each parameter "applied" (the server runs with it), "pending" (needs
    a restart: pg_settings says so, or Patroni does, for the settings it passes on the
    command line) or "waiting" (not reloaded yet)."""
    if not params:
        return {}
    names = ",".join(sql.literal(n) for n in params)
    query = (
        "SELECT name, setting, coalesce(unit, ''), vartype, pending_restart "
        f"FROM pg_settings WHERE name IN ({names})"
    )
    res = sql.psql(conn, query, warn=True)
    rows = {}
    for line in res.stdout.splitlines():
        parts = line.split("|")
        if len(parts) == 5:
            rows[parts[0]] = parts[1:]
    states = {}
    for name, wanted in params.items():
        row = rows.get(name)
        if row is None:
            states[name] = "waiting" if res.ok and wanted is not None else "applied"
            continue
        setting, unit, vartype, row_pending = row
        if wanted is None or guc.matches(wanted, setting, unit or None, vartype):
            states[name] = "applied"
        elif row_pending == "t" or pending:
            states[name] = "pending"
        else:
            states[name] = "waiting"
    return states


# --- status ------------------------------------------------------------------------------


def member_info(conn: Connection, ip: str) -> dict:
    """GET /patroni of one member: state, role, postmaster start time, timeline."""
    data = get_json(conn, ip, "/patroni") or {}
    return {
        "state": data.get("state"),
        "role": data.get("role"),
        "postmaster_start_time": data.get("postmaster_start_time"),
        "timeline": data.get("timeline"),
        "pending_restart": bool(data.get("pending_restart")),
    }


def patroni_status(conn: Connection, ip: str, expected: list[str], synchronous: bool) -> dict:
    members = cluster(conn, ip)
    if not members:
        return {"ok": False, "members": [], "problems": [f"no answer from Patroni at {ip}"]}
    members = with_live_lag(conn, members)
    problems = assess_cluster(members, expected, synchronous)
    return {"ok": not problems, "members": [asdict(m) for m in members], "problems": problems}


@dataclass
class StartReport:
    bootstrapped: str | None = None
    started: list[str] = field(default_factory=list)
    reloaded: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    switched_over: str | None = None  # "old -> new": the leader handed over before its restart


# --- Prefect tasks -------------------------------------------------------------------------


@task(name="patroni_configure", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def configure_member(
    remote: Remote,
    host: Host,
    spec: StackSpec,
    etcd_ips: list,
    secrets: Secrets,
    wheels: Path,
    peers: dict,
    restore: RestorePoint | None = None,
) -> dict:
    with remote.connect(host) as conn:
        return configure(conn, host, spec, etcd_ips, secrets.reveal(), wheels, peers, restore)


# The waits for the cluster to converge: retrying would only wait longer; fail with the reason.
@task(name="patroni_converge", cache_policy=NO_CACHE, retries=0)
def converge(
    remote: Remote, hosts: list[Host], spec: StackSpec, etcd_ips: list, configured: dict
) -> dict:
    """First run: the first postgres host bootstraps alone and must lead before the others
    start (and clone from it). Later runs: start what is stopped, reload (SIGHUP, no
    PostgreSQL restart) what got a new patroni.yml, restart (replicas first) what got a
    new unit, the leader never in place: a switchover hands its role over first. Ends
    when one leader runs and every replica streams with zero lag."""
    report = StartReport()
    first = hosts[0]
    with remote.connect(first) as conn:
        bootstrapped = initialized(conn, spec, etcd_ips)
    pending = [h for h in hosts if not configured[h.name]["active"]]
    if not bootstrapped:
        with remote.connect(first) as conn:
            if first in pending:
                start(conn)
                pending.remove(first)
            wait_primary(conn, first.private_ip, timeout=300)
        report.bootstrapped = first.name
    for host in pending:
        with remote.connect(host) as conn:
            start(conn)
        report.started.append(host.name)
    # Members that were already running before this run: new unit -> restart, new yml -> HUP.
    running = [h for h in hosts if configured[h.name]["active"]]
    for host in running:
        if configured[host.name]["config_changed"] and not configured[host.name]["unit_changed"]:
            with remote.connect(host) as conn:
                reload(conn)
            report.reloaded.append(host.name)
    to_restart = {h.name for h in running if configured[h.name]["unit_changed"]}
    expected = [h.name for h in hosts]
    ips = [h.private_ip for h in hosts]
    if to_restart:
        with remote.connect(first) as conn:
            members = wait_healthy(conn, ips, expected, spec.synchronous_mode, timeout=420)
        by_name = {h.name: h for h in hosts}
        for name in restart_order(members, only_pending=False):
            if name not in to_restart:
                continue
            with remote.connect(by_name[name]) as conn:
                switched = _hand_over(conn, spec, name, ips, expected, report.restarted)
                report.switched_over = switched or report.switched_over
                restart_service(conn)
                wait_healthy(conn, ips, expected, spec.synchronous_mode, timeout=300)
            report.restarted.append(name)
    with remote.connect(first) as conn:
        members = wait_healthy(conn, ips, expected, spec.synchronous_mode, timeout=420)
    return {"report": report.__dict__, "members": [m.__dict__ for m in members]}


@task(name="patroni_parameters", cache_policy=NO_CACHE, retries=0)
def apply_parameters(remote: Remote, hosts: list[Host], spec: StackSpec, restart: bool) -> dict:
    """Patch the DCS to the spec's dynamic configuration; wait until every member runs with
    each changed parameter or reports it pending a restart; with `restart`, restart the
    pending members one at a time, replicas first. The leader is never restarted in
    place: once the replicas are done, a switchover hands its role to the synchronous
    standby (or another restarted replica), and it is restarted as a replica."""
    log = get_run_logger()
    first = hosts[0]
    expected = [h.name for h in hosts]
    ips = [h.private_ip for h in hosts]
    with remote.connect(first) as conn:
        patch = apply_dynamic(conn, spec)
    params = changed_parameters(patch)
    if patch:
        _wait_reloaded(remote, hosts, spec, {k: v for k, v in params.items() if v is not None})
    members = _live_pending(remote, hosts)
    pending = [m.name for m in members if m.pending_restart]
    restarted: list[str] = []
    switched = None
    if pending and restart:
        by_name = {h.name: h for h in hosts}
        for name in restart_order(members):
            with remote.connect(by_name[name]) as conn:
                switched = _hand_over(conn, spec, name, ips, expected, restarted) or switched
                log.info("restarting %s (pending restart)", name)
                restart_member(conn, spec, name)
                wait_healthy(conn, ips, expected, spec.synchronous_mode, timeout=300)
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
        "switched_over": switched,
    }


def _hand_over(
    conn: Connection,
    spec: StackSpec,
    name: str,
    ips: list[str],
    expected: list[str],
    restarted: list[str],
) -> str | None:
    """Before member `name` restarts: if it leads (and is not alone), a switchover to
    `_successor`, so that the leader is never restarted in place. Returns "old -> new"."""
    now = wait_healthy(conn, ips, expected, spec.synchronous_mode, timeout=300)
    if not any(m.name == name and m.is_leader for m in now) or len(now) < 2:
        return None
    candidate = _successor(now, restarted)
    get_run_logger().info("switching over %s -> %s before restarting it", name, candidate)
    switchover(conn, spec, name, candidate)
    wait_healthy(conn, ips, expected, spec.synchronous_mode, 300)
    return f"{name} -> {candidate}"


def _successor(members: list[Member], restarted: list[str]) -> str:
    """Who takes over from a leader about to restart: the synchronous standby, else a
    streaming replica, preferring one already restarted (it runs the new settings)."""
    replicas = [m for m in members if not m.is_leader and m.state in ("streaming", "running")]
    ordered = sorted(replicas, key=lambda m: (m.role != "sync_standby", m.name not in restarted))
    if not ordered:
        raise PatroniError("no running replica to hand the leader role to before its restart")
    return ordered[0].name


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
        waiting: list[str] = []
        with remote.connect(host) as conn:

            def taken(
                conn: Connection = conn, ip: str = host.private_ip, waiting: list = waiting
            ) -> bool:
                pending = member_info(conn, ip)["pending_restart"]
                states = parameter_states(conn, wanted, pending)
                waiting[:] = [p for p, st in states.items() if st == "waiting"]
                if waiting:
                    raise NotYet(f"not in effect nor pending a restart: {', '.join(waiting)}")
                if time.monotonic() < settle:
                    raise NotYet("two Patroni loops have not gone by yet")
                return True

            # A late member is reported below, with every other late member.
            with suppress(WaitTimeout):
                wait_until(
                    f"{host.name} to take the new dynamic configuration",
                    taken,
                    timeout=max(0.0, deadline - time.monotonic()),
                    every=1,
                )
        if waiting:
            late[host.name] = waiting
    if late:
        raise PatroniError(f"parameters not applied after the DCS change: {late}")


def _live_pending(remote: Remote, hosts: list[Host]) -> list[Member]:
    """Members with roles from /cluster and pending_restart from each member's own
    GET /patroni (the copy in the DCS lags by up to a loop)."""
    with remote.connect(hosts[0]) as conn:
        members = cluster(conn, *[h.private_ip for h in hosts])
    live = {}
    for host in hosts:
        with remote.connect(host) as conn:
            live[host.name] = member_info(conn, host.private_ip)["pending_restart"]
    return [replace(m, pending_restart=live.get(m.name, False)) for m in members]


def _flatten(patch: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in patch.items():
        if isinstance(value, dict):
            keys += _flatten(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


@task(name="patroni_verify", cache_policy=NO_CACHE, retries=0)
def verify(remote: Remote, hosts: list[Host], spec: StackSpec, timeout: float = 120) -> list:
    """The cluster as it is now: one leader, every replica streaming with zero lag."""
    with remote.connect(hosts[0]) as conn:
        return wait_healthy(
            conn,
            [h.private_ip for h in hosts],
            [h.name for h in hosts],
            spec.synchronous_mode,
            timeout,
        )
