"""HAProxy on the haproxy droplets: :primary_port to the Patroni leader, :replica_port across
healthy replicas, routed by Patroni's REST checks.

A new config is staged next to the live one, checked with `haproxy -c` on the droplet,
and only then moved into place and reloaded (master-worker: old workers finish their
connections). The staged copy is kept, so an unchanged rerun writes nothing.
"""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING

from fabric import Connection
from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.secrets import HAPROXY_STATS, POSTGRES_ROUTING
from blocks.stack import ROUTING_ROLE, StackSpec
from lifeboat.waiting import NotYet, WaitTimeout, wait_until
from tasks.hosts import Host, put, run
from tasks.render import DESTINATIONS, render
from tasks.sql import ensure_login_role, psql, through_haproxy

if TYPE_CHECKING:
    from tasks.context import Remote, Secrets

LIVE, OWNER, MODE = DESTINATIONS["haproxy/haproxy.cfg.j2"]
STAGED = LIVE + ".lifeboat"
SOCKET = "/run/haproxy/admin.sock"
PGPASS = "/root/.lifeboat-pgpass"
# Routing is checked through HAProxy as ROUTING_ROLE: it may log in to database postgres
# from HAProxy droplets (pg_hba) and do nothing else. Never the superuser: these droplets
# may face the internet (the compact example's web droplets).
# `show stat` through the admin socket with the droplet's own python3 (no socat there).
_SHOW_STAT = (
    'python3 -c "import socket; s = socket.socket(socket.AF_UNIX); s.settimeout(5); '
    f"s.connect('{SOCKET}'); s.sendall(b'show stat\\n'); "
    "print(b''.join(iter(lambda: s.recv(65536), b'')).decode())\""
)


class HAProxyError(RuntimeError):
    pass


def render_config(spec: StackSpec, host: Host, postgres_nodes: dict[str, str], stats: str) -> str:
    return render(
        "haproxy/haproxy.cfg.j2",
        spec=spec,
        address=host.private_ip,
        postgres_nodes=postgres_nodes,
        stats_password=stats,
    )


def _scrub(text: str, secret: str) -> str:
    return text.replace(secret, "**********") if secret else text


def configure(
    conn: Connection, host: Host, spec: StackSpec, postgres_nodes: dict[str, str], stats: str
) -> dict[str, bool]:
    """Stage, validate, install and reload when the config differs; start if stopped.
    Returns {"config_changed", "reloaded", "started"}."""
    content = render_config(spec, host, postgres_nodes, stats)
    put(conn, STAGED, content, MODE, OWNER)
    same = run(
        conn,
        f"cmp -s {STAGED} {LIVE} && [ \"$(stat -c '%a %U:%G' {LIVE})\" = "
        f"\"$(stat -c '%a %U:%G' {STAGED})\" ]",
        warn=True,
        timeout=30,
    ).ok
    changed = not same
    if changed:
        check = run(conn, f"haproxy -c -q -f {STAGED}", warn=True, timeout=60)
        if not check.ok:
            # haproxy may quote the offending line, which could be the stats password's.
            raise HAProxyError(
                f"haproxy -c rejected the rendered config on {host.name}: "
                + _scrub((check.stderr or check.stdout).strip(), stats)
            )
        run(conn, f"cp -p {STAGED} {LIVE}.tmp && mv {LIVE}.tmp {LIVE}", timeout=30)
    active = run(conn, "systemctl is-active --quiet haproxy", warn=True, timeout=30).ok
    run(conn, "systemctl enable --quiet haproxy", timeout=60)
    if not active:
        run(conn, "systemctl start haproxy", timeout=60)
    elif changed:
        run(conn, "systemctl reload haproxy", timeout=60)
    return {"config_changed": changed, "reloaded": active and changed, "started": not active}


def disable(conn: Connection) -> bool:
    """Stop Debian's default HAProxy on a droplet without the haproxy role."""
    enabled = run(conn, "systemctl is-enabled --quiet haproxy", warn=True, timeout=30).ok
    active = run(conn, "systemctl is-active --quiet haproxy", warn=True, timeout=30).ok
    if not (enabled or active):
        return False
    run(conn, "systemctl disable --now --quiet haproxy", timeout=60)
    return True


# --- backends ----------------------------------------------------------------------------


def parse_stat(csv_text: str) -> dict[str, dict[str, str]]:
    """`show stat` CSV -> {proxy: {server: status}} (FRONTEND/BACKEND rows left out)."""
    text = csv_text.lstrip("# ")
    backends: dict[str, dict[str, str]] = {}
    for row in csv.DictReader(io.StringIO(text)):
        proxy, server = row.get("pxname"), row.get("svname")
        if not proxy or server in (None, "FRONTEND", "BACKEND"):
            continue
        backends.setdefault(proxy, {})[server] = (row.get("status") or "").split()[0]
    return backends


def up_servers(backends: dict[str, dict[str, str]], backend: str) -> list[str]:
    return sorted(s for s, st in backends.get(backend, {}).items() if st == "UP")


def assess_backends(
    backends: dict[str, dict[str, str]], leader: str, replicas: list[str]
) -> list[str]:
    """Only the leader UP in `primary`; exactly the streaming replicas UP in `replicas`."""
    problems = []
    up = {p: up_servers(backends, p) for p in backends}
    if up.get("primary") != [leader]:
        problems.append(f"primary backend has {up.get('primary', [])} UP, expected [{leader}]")
    if up.get("replicas") != sorted(replicas):
        problems.append(f"replicas backend has {up.get('replicas', [])} UP, expected {replicas}")
    return problems


def backends(conn: Connection) -> dict[str, dict[str, str]]:
    res = run(conn, _SHOW_STAT, warn=True, timeout=20)
    if not res.ok:
        raise HAProxyError(f"HAProxy's stats socket did not answer on {conn.host}")
    return parse_stat(res.stdout)


def wait_backends(
    conn: Connection, leader: str, replicas: list[str], timeout: float = 60
) -> dict[str, dict[str, str]]:
    def routing() -> dict[str, dict[str, str]]:
        found = backends(conn)
        problems = assess_backends(found, leader, replicas)
        if problems:
            raise NotYet("; ".join(problems))
        return found

    try:
        return wait_until(
            f"HAProxy on {conn.host} to route to the primary",
            routing,
            timeout,
            every=1,
            retry_on=(HAProxyError,),
        )
    except WaitTimeout as e:
        raise HAProxyError(f"HAProxy on {conn.host}: {e.last}") from e


def place_pgpass(conn: Connection, spec: StackSpec, password: str) -> None:
    """A 0600 password file for psql through the local HAProxy ports (never an argument),
    as the routing role. It replaces the superuser's file earlier versions placed here."""
    h = spec.haproxy
    lines = [
        f"127.0.0.1:{port}:postgres:{ROUTING_ROLE}:{password}"
        for port in (h.primary_port, h.replica_port)
    ]
    put(conn, PGPASS, "\n".join(lines) + "\n", "0600", "root:root")


def query(conn: Connection, spec: StackSpec, port: int, statement: str) -> str:
    """One value through HAProxy on this droplet, as the routing role (password from
    PGPASS)."""
    target = through_haproxy(port, ROUTING_ROLE, "postgres", PGPASS)
    res = psql(conn, statement, target, warn=True)
    if not res.ok:
        raise HAProxyError(
            f"psql through {conn.host}:{port} failed: {res.stderr.strip().splitlines()[-1:]}"
        )
    return res.stdout.strip()


def verify_routing(conn: Connection, spec: StackSpec, replicas: bool = True) -> dict[str, str]:
    """:primary_port reaches a server not in recovery, :replica_port one in recovery (a
    single-node stack has no replica to reach)."""
    h = spec.haproxy
    if query(conn, spec, h.primary_port, "SELECT pg_is_in_recovery()") != "f":
        raise HAProxyError(f"{conn.host}:{h.primary_port} reached a server in recovery")
    result = {"primary_port": "read-write", "replica_port": "no replicas"}
    if replicas:
        if query(conn, spec, h.replica_port, "SELECT pg_is_in_recovery()") != "t":
            raise HAProxyError(f"{conn.host}:{h.replica_port} reached a server not in recovery")
        result["replica_port"] = "read-only"
    return result


def haproxy_status(conn: Connection) -> dict[str, dict[str, str]]:
    return backends(conn)


# --- Prefect tasks -------------------------------------------------------------------------


@task(name="haproxy_configure", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def configure_member(
    remote: Remote, host: Host, spec: StackSpec, postgres_nodes: dict, secrets: Secrets
) -> dict:
    with remote.connect(host) as conn:
        return configure(conn, host, spec, postgres_nodes, secrets[HAPROXY_STATS])


@task(name="routing_role", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def routing_role(remote: Remote, leader: Host, secrets: Secrets) -> list[str]:
    with remote.connect(leader) as conn:
        return ensure_login_role(conn, ROUTING_ROLE, secrets[POSTGRES_ROUTING])


@task(name="haproxy_verify", cache_policy=NO_CACHE, retries=0)
def verify(
    remote: Remote, host: Host, spec: StackSpec, leader: str, replicas: list, secrets: Secrets
) -> dict:
    """Backends as Patroni says they should be, then real connections through the ports."""
    with remote.connect(host) as conn:
        backends = wait_backends(conn, leader, replicas, timeout=60)
        place_pgpass(conn, spec, secrets[POSTGRES_ROUTING])
        # A new HAProxy droplet's address reaches pg_hba by a Patroni reload, which takes
        # effect in Patroni's next loop: until then its connections are refused.
        try:
            routing = wait_until(
                f"routing through HAProxy on {host.name}",
                lambda: verify_routing(conn, spec, replicas=bool(replicas)),
                timeout=20 + 4 * spec.patroni.loop_wait,
                every=2,
                retry_on=(HAProxyError,),
            )
        except WaitTimeout as e:
            raise HAProxyError(f"HAProxy on {host.name}: {e.last}") from e
    return {"backends": backends, "routing": routing}
