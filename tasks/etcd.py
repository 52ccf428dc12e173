"""The etcd cluster on the etcd droplets: Patroni's DCS.

Debian's etcd-server package starts a single-node etcd (its own cluster id, data in
/var/lib/etcd/default) the moment it is installed; a member with that data refuses to join
another cluster. Its data is wiped exactly once per droplet, before it first joins OUR
cluster; a marker file with our cluster token records that it did, so no later run (even
one that finds etcd down) can wipe a real member's data.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fabric import Connection
from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.stack import StackSpec
from lifeboat.waiting import NotYet, WaitTimeout, wait_until
from tasks.hosts import Host, put, run
from tasks.render import DESTINATIONS, render

if TYPE_CHECKING:
    from tasks.context import Remote

DATA_DIR = "/var/lib/etcd/default"
MARKER = "/var/lib/etcd/lifeboat-cluster"
CLIENT_PORT = 2379
PEER_PORT = 2380
ETCDCTL = "ETCDCTL_API=3 etcdctl --dial-timeout=3s --command-timeout=5s"


class EtcdError(RuntimeError):
    pass


def cluster_token(spec: StackSpec) -> str:
    return spec.resource_name


def members(hosts: list[Host]) -> dict[str, str]:
    """{member name: private address} of the etcd droplets, in spec order."""
    return {h.name: h.private_ip for h in hosts if "etcd" in h.roles}


def endpoints(member_ips: dict[str, str] | list[str]) -> str:
    ips = member_ips.values() if isinstance(member_ips, dict) else member_ips
    return ",".join(f"http://{ip}:{CLIENT_PORT}" for ip in ips)


def _active(conn: Connection, unit: str) -> bool:
    return run(conn, f"systemctl is-active --quiet {unit}", warn=True, timeout=30).ok


def _marker(conn: Connection) -> str:
    return run(conn, f"cat {MARKER} 2>/dev/null", warn=True, timeout=30).stdout.strip()


def _foreign(host: Host, marker: str, token: str) -> EtcdError:
    return EtcdError(
        f"{host.name} is a member of etcd cluster {marker!r}, not {token!r}: "
        "it belongs to another stack; destroy or rebuild the droplet"
    )


def _settings(env: str) -> list[str]:
    """The lines of an /etc/default/etcd that matter once a member has data: etcd reads
    the ETCD_INITIAL_* ones only when it first forms or joins a cluster."""
    return [
        line
        for line in env.splitlines()
        if line.strip() and not line.startswith(("#", "ETCD_INITIAL_"))
    ]


def _cluster_state(env: str) -> str | None:
    for line in env.splitlines():
        if line.startswith("ETCD_INITIAL_CLUSTER_STATE="):
            return line.split("=", 1)[1].strip("'\"")
    return None


def configure(
    conn: Connection,
    host: Host,
    spec: StackSpec,
    member_ips: dict[str, str],
    cluster_state: str | None = None,
) -> dict:
    """Place /etc/default/etcd and, the first time only, wipe Debian's single-node data.
    Starts nothing (members of a new cluster must start together: see `start`).
    `cluster_state` "existing" for a member joining a running cluster (see `admit`);
    otherwise the state already written stays (a rerun changes nothing).
    Returns {"config_changed", "restart_needed", "wiped", "active"}."""
    token = cluster_token(spec)
    path, owner, mode = DESTINATIONS["etcd/etcd.env.j2"]
    before = run(conn, f"cat {path} 2>/dev/null", warn=True, timeout=30).stdout
    content = render(
        "etcd/etcd.env.j2",
        name=host.name,
        address=host.private_ip,
        members=member_ips,
        cluster_token=token,
        data_dir=DATA_DIR,
        cluster_state=cluster_state or _cluster_state(before) or "new",
    )
    marker = _marker(conn)
    wiped = False
    if marker != token:
        if marker:
            # Another Lifeboat cluster's member: joining ours would need `member remove/add`.
            raise _foreign(host, marker, token)
        run(conn, f"systemctl stop etcd && rm -rf {DATA_DIR}", timeout=120)
        wiped = True
    changed = put(conn, path, content, mode, owner)
    if wiped:
        run(conn, f"echo {shlex.quote(token)} > {MARKER} && chmod 0644 {MARKER}", timeout=30)
    run(conn, "systemctl enable --quiet etcd", timeout=60)
    return {
        "config_changed": changed,
        # A new peer address in ETCD_INITIAL_CLUSTER (a member replaced) is no reason to
        # restart the members that have data: they never read it again.
        "restart_needed": changed and _settings(before) != _settings(content),
        "wiped": wiped,
        "active": _active(conn, "etcd"),
    }


def start(conn: Connection) -> None:
    """Start without waiting: a new member's start only completes once a quorum is up."""
    run(conn, "systemctl start --no-block etcd", timeout=60)


def restart(conn: Connection) -> None:
    run(conn, "systemctl restart etcd", timeout=120)


def disable(conn: Connection) -> bool:
    """Stop Debian's default etcd on a droplet that is not an etcd member."""
    enabled = run(conn, "systemctl is-enabled --quiet etcd", warn=True, timeout=30).ok
    if not enabled and not _active(conn, "etcd"):
        return False
    run(conn, "systemctl disable --now --quiet etcd", timeout=120)
    return True


# --- membership: a lost member replaced ------------------------------------------------


def peer_url(ip: str) -> str:
    return f"http://{ip}:{PEER_PORT}"


def admission(listed: dict, name: str, ip: str, expected: dict[str, str]) -> tuple[list[int], bool]:
    """For droplet `name` at `ip`, new (no data) and joining the running cluster whose
    `member list` is `listed`: (IDs of members to remove first, whether to add it).
    Removed: a started member of that name or address (the lost droplet's record: its
    data is gone with it), and a never-started one at an address no planned member has
    (an earlier attempt's). A never-started record at its own address is an earlier
    attempt's `member add`: kept, not added twice."""
    mine = peer_url(ip)
    wanted = {peer_url(a) for a in expected.values()}
    remove, add = [], True
    for m in listed.get("members", []):
        urls = m.get("peerURLs", [])
        started = bool(m.get("name"))
        if started and (m["name"] == name or mine in urls):
            remove.append(m["ID"])
        elif not started and mine in urls:
            add = False
        elif not started and not wanted & set(urls):
            remove.append(m["ID"])
    return remove, add


def member_list(conn: Connection, ips: list[str]) -> dict | None:
    """`member list` through the given members; None when they do not answer (no
    cluster formed yet, or no quorum)."""
    res = run(conn, f"{ETCDCTL} --endpoints={endpoints(ips)} member list -w json", warn=True)
    listed = _json(res.stdout, None) if res.ok else None
    return listed if isinstance(listed, dict) and listed.get("members") else None


@task(name="etcd_admit", cache_policy=NO_CACHE, retries=0)
def admit(remote: Remote, hosts: list[Host], spec: StackSpec, members: dict) -> dict[str, str]:
    """Members that must join a running cluster (a droplet replaced: new, no data, while
    the others have ours): the lost member's record removed first (removing before adding
    keeps the quorum), then the new one added. Returns {name: "existing"} for those, to
    configure them to join rather than form a cluster; {} when the cluster is new or
    whole."""
    token = cluster_token(spec)
    fresh, settled = [], []
    for host in hosts:
        with remote.connect(host) as conn:
            marker = _marker(conn)
        if marker and marker != token:
            raise _foreign(host, marker, token)
        (settled if marker else fresh).append(host)
    if not fresh or not settled:
        return {}
    with remote.connect(settled[0]) as conn:
        listed = member_list(conn, [h.private_ip for h in settled])
        if listed is None:
            raise EtcdError(
                f"etcd members {', '.join(h.name for h in settled)} do not answer (no quorum): "
                f"{', '.join(h.name for h in fresh)} cannot join; bring the others back first"
            )
        for host in fresh:
            remove, add = admission(listed, host.name, host.private_ip, members)
            for member_id in remove:
                run(
                    conn,
                    f"{ETCDCTL} --endpoints={endpoints([settled[0].private_ip])} "
                    f"member remove {member_id:x}",
                )
            if add:
                run(
                    conn,
                    f"{ETCDCTL} --endpoints={endpoints([settled[0].private_ip])} "
                    f"member add {shlex.quote(host.name)} --peer-urls={peer_url(host.private_ip)}",
                )
    return {h.name: "existing" for h in fresh}


# --- health ------------------------------------------------------------------------------


@dataclass
class EtcdHealth:
    members: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {"ok": self.ok, "members": self.members, "problems": self.problems}


def assess(
    expected: dict[str, str], member_list: dict, status: list[dict], health: list[dict]
) -> EtcdHealth:
    """Judge `etcdctl -w json` output of `member list`, `endpoint status` and `endpoint
    health` against the members we expect: every one listed with our peer URL, healthy,
    and all agreeing on exactly one leader."""
    result = EtcdHealth()
    listed = {m.get("name", ""): m for m in member_list.get("members", [])}
    id_to_name = {m["ID"]: name for name, m in listed.items() if "ID" in m}
    status_by_ip = {s["Endpoint"].split("//")[-1].rsplit(":", 1)[0]: s for s in status}
    health_by_ip = {h["endpoint"].split("//")[-1].rsplit(":", 1)[0]: h for h in health}
    leaders = set()
    for name, ip in expected.items():
        m = listed.get(name)
        st = status_by_ip.get(ip, {}).get("Status", {})
        healthy = bool(health_by_ip.get(ip, {}).get("health"))
        member_id = st.get("header", {}).get("member_id")
        is_leader = member_id is not None and member_id == st.get("leader")
        if st.get("leader"):
            leaders.add(st["leader"])
        result.members.append(
            {
                "name": name,
                "address": ip,
                "healthy": healthy,
                "leader": is_leader,
                "version": st.get("version"),
                "raft_term": st.get("raftTerm"),
                "db_size": st.get("dbSize"),
            }
        )
        if m is None:
            result.problems.append(f"{name} is not a member of the etcd cluster")
        elif f"http://{ip}:{PEER_PORT}" not in m.get("peerURLs", []):
            result.problems.append(f"{name} advertises {m.get('peerURLs')}, not {ip}:{PEER_PORT}")
        if not healthy:
            result.problems.append(f"{name} ({ip}) is not healthy")
    extra = sorted(set(listed) - set(expected))
    if extra:
        result.problems.append(f"unexpected etcd members: {', '.join(extra)}")
    if len(leaders) != 1:
        names = sorted(id_to_name.get(x, str(x)) for x in leaders)
        result.problems.append(f"members do not agree on one leader: {names or 'none'}")
    elif sum(m["leader"] for m in result.members) != 1:
        result.problems.append("the leader the members name is not one of them")
    return result


def _json(text: str, default: object) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return default


def check(conn: Connection, expected: dict[str, str]) -> EtcdHealth:
    """Ask every member (over the private addresses, from the droplet behind `conn`)."""
    eps = endpoints(expected)
    # With a member down etcdctl exits non-zero but still prints the others: parse stdout.
    mlist = run(conn, f"{ETCDCTL} --endpoints={eps} member list -w json", warn=True, timeout=30)
    status = run(
        conn, f"{ETCDCTL} --endpoints={eps} endpoint status -w json", warn=True, timeout=30
    )
    health = run(
        conn, f"{ETCDCTL} --endpoints={eps} endpoint health -w json", warn=True, timeout=30
    )
    return assess(
        expected,
        _json(mlist.stdout, {}) or {},
        _json(status.stdout, []) or [],
        _json(health.stdout, []) or [],
    )


def wait_healthy(conn: Connection, expected: dict[str, str], timeout: float = 120) -> EtcdHealth:
    def healthy() -> EtcdHealth:
        health = check(conn, expected)
        if not health.ok:
            raise NotYet("; ".join(health.problems))
        return health

    try:
        return wait_until("a healthy etcd cluster", healthy, timeout, every=2)
    except WaitTimeout as e:
        raise EtcdError(f"etcd not healthy after {timeout:.0f}s: {e.last}") from e


# --- Prefect tasks -------------------------------------------------------------------------


@task(name="etcd_configure", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def configure_member(
    remote: Remote, host: Host, spec: StackSpec, members: dict, joining: dict[str, str]
) -> dict:
    with remote.connect(host) as conn:
        return configure(conn, host, spec, members, joining.get(host.name))


# Waits for the cluster to converge: retrying would only wait longer; fail with the reason.
@task(name="etcd_converge", cache_policy=NO_CACHE, retries=0)
def converge(remote: Remote, hosts: list[Host], configured: dict, members: dict) -> dict:
    """Start new or stopped members together (a new member's start completes only with a
    quorum); restart members whose config changed one at a time, each back to healthy
    before the next. Then: every member healthy, exactly one leader."""
    started, restarted = [], []
    for host in hosts:
        state = configured[host.name]
        if state["wiped"] or not state["active"]:
            with remote.connect(host) as conn:
                start(conn)
            started.append(host.name)
    with remote.connect(hosts[0]) as conn:
        wait_healthy(conn, members, timeout=180)
    for host in hosts:
        state = configured[host.name]
        if state["restart_needed"] and host.name not in started:
            with remote.connect(host) as conn:
                restart(conn)
                wait_healthy(conn, members, timeout=120)
            restarted.append(host.name)
    with remote.connect(hosts[0]) as conn:
        health = wait_healthy(conn, members, timeout=60)
    return {"started": started, "restarted": restarted, "health": health.as_dict()}


@task(name="etcd_verify", cache_policy=NO_CACHE, retries=0)
def verify(remote: Remote, host: Host, members: dict) -> EtcdHealth:
    """Every member healthy and one leader, asked on `host`; an EtcdError otherwise."""
    with remote.connect(host) as conn:
        health = check(conn, members)
    if not health.ok:
        raise EtcdError(f"etcd after the run: {'; '.join(health.problems)}")
    return health
