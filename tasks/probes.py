"""Read-only probes of a stack for the status runbook: services' start times (systemd),
each database droplet's Patroni member and WAL archiver, etcd, Patroni and HAProxy as their
members see them, and the backup catalog. A part that cannot be reached is a finding,
reported in the result, never an exception."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import backup, etcd, haproxy, patroni, wordpress
from tasks.hosts import Host, run

if TYPE_CHECKING:
    from tasks.context import Remote, StackContext

UNITS = {
    "etcd": ("etcd",),
    "postgres": ("patroni",),
    "haproxy": ("haproxy",),
    "wordpress": wordpress.SERVICES,
}


def _error(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


def service_since(conn, units: list[str]) -> dict[str, str]:  # noqa: ANN001 - fabric
    """systemd's ActiveEnterTimestamp per unit ('' when the unit is not active)."""
    if not units:
        return {}
    res = run(conn, f"systemctl show -p Id -p ActiveEnterTimestamp {' '.join(units)}", timeout=30)
    return parse_show(res.stdout)


def parse_show(text: str) -> dict[str, str]:
    """`systemctl show -p Id -p ActiveEnterTimestamp A B`: one block per unit, blank-line
    separated, properties in systemd's order (not ours)."""
    since = {}
    for block in text.strip().split("\n\n"):
        props = dict(line.partition("=")[::2] for line in block.splitlines() if "=" in line)
        if props.get("Id"):
            since[props["Id"].removesuffix(".service")] = props.get("ActiveEnterTimestamp", "")
    return since


def _archiver(conn) -> dict:  # noqa: ANN001 - fabric
    try:
        return backup.archiver(conn)
    except Exception as exc:  # noqa: BLE001 - PostgreSQL down here is a finding
        return {"error": _error(exc)}


@task(name="droplet_status", cache_policy=NO_CACHE, retries=0)
def droplet_status(remote: Remote, host: Host) -> dict:
    """A droplet's addresses and roles, its services' start times, and on a database
    droplet its Patroni member and WAL archiver."""
    entry: dict = {
        "name": host.name,
        "id": host.droplet_id,
        "public_ip": host.public_ip,
        "private_ip": host.private_ip,
        "roles": list(host.roles),
    }
    try:
        with remote.connect(host) as conn:
            units = [u for r in host.roles for u in UNITS.get(r, ())]
            entry["services"] = service_since(conn, units)
            if "postgres" in host.roles:
                entry["postgres"] = patroni.member_info(conn, host.private_ip)
                entry["archiver"] = _archiver(conn)
    except Exception as exc:  # noqa: BLE001 - an unreachable droplet is a finding
        entry["error"] = _error(exc)
    return entry


def _first_answer(hosts: list[Host], remote: Remote, ask: Callable[[Any, Host], dict]) -> dict:
    """The first host's answer to `ask(conn, host)`; the next host if one cannot be reached."""
    errors = []
    for host in hosts:
        try:
            with remote.connect(host) as conn:
                return ask(conn, host)
        except Exception as exc:  # noqa: BLE001 - report, try the next member
            errors.append(f"{host.name}: {_error(exc)}")
    return {"ok": False, "problems": errors or ["no hosts with this role"]}


@task(name="etcd_status", cache_policy=NO_CACHE, retries=0)
def etcd_status(remote: Remote, hosts: list[Host], members: dict[str, str]) -> dict:
    return _first_answer(hosts, remote, lambda c, h: etcd.check(c, members).as_dict())


@task(name="patroni_status", cache_policy=NO_CACHE, retries=0)
def patroni_status(remote: Remote, hosts: list[Host], expected: list[str], sync: bool) -> dict:
    return _first_answer(
        hosts, remote, lambda c, h: patroni.patroni_status(c, h.private_ip, expected, sync)
    )


@task(name="haproxy_status", cache_policy=NO_CACHE, retries=0)
def haproxy_status(remote: Remote, host: Host) -> dict:
    try:
        with remote.connect(host) as conn:
            return haproxy.haproxy_status(conn)
    except Exception as exc:  # noqa: BLE001
        return {"error": _error(exc)}


@task(name="backups_status", cache_policy=NO_CACHE, retries=0)
def backups_status(stack: StackContext) -> dict:
    """The catalog: how many backups, the newest and its age."""
    try:
        entries, problems = backup.read_catalog(stack.s3, stack.spec.bucket, stack.spec.name)
    except Exception as exc:  # noqa: BLE001 - Spaces away is a finding
        return {"error": _error(exc)}
    newest = entries[-1].manifest if entries else None
    return {
        "count": len(entries),
        "newest": newest["id"] if newest else None,
        "newest_age_s": round(time.time() - newest["stopped_at"]) if newest else None,
        "newest_stored_bytes": newest["stored_bytes"] if newest else None,
        "problems": problems,
    }
