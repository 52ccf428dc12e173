"""status: what a stack looks like right now: droplets and roles, etcd health, Patroni
members (role, state, timeline, lag), HAProxy backends, WAL archiving per database droplet
(pg_stat_archiver, segments waiting) and the backup catalog. Read-only; a part that cannot
be reached is reported as such instead of failing the whole report."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger

from blocks.credentials import SpacesCredentials
from blocks.stack import StackSpec
from flows import remote as rm
from tasks import backup, etcd, haproxy, patroni, wordpress
from tasks.hosts import Host, run
from tasks.spaces import s3_client

UNITS = {
    "etcd": ("etcd",),
    "postgres": ("patroni",),
    "haproxy": ("haproxy",),
    "wordpress": wordpress.SERVICES,
}


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


def _first_answer(hosts: list[Host], remote: rm.Remote, ask):  # noqa: ANN001, ANN202
    """The first host's answer to `ask(conn, host)`; the next host if one cannot be reached."""
    errors = []
    for host in hosts:
        try:
            with remote.connect(host) as conn:
                return ask(conn, host)
        except Exception as exc:  # noqa: BLE001 - report, try the next member
            errors.append(f"{host.name}: {type(exc).__name__}: {exc}")
    return {"ok": False, "problems": errors or ["no hosts with this role"]}


def _archiver(conn) -> dict:  # noqa: ANN001 - fabric
    try:
        return backup.archiver(conn)
    except Exception as exc:  # noqa: BLE001 - PostgreSQL down here is a finding
        return {"error": f"{type(exc).__name__}: {exc}"}


def _backups(spec: StackSpec, credentials: str) -> dict:
    """The catalog: how many backups, the newest and its age."""
    try:
        s3 = s3_client(SpacesCredentials.load(credentials))
        entries, problems = backup.read_catalog(s3, spec.bucket, spec.name)
    except Exception as exc:  # noqa: BLE001 - Spaces away is a finding
        return {"error": f"{type(exc).__name__}: {exc}"}
    newest = entries[-1].manifest if entries else None
    return {
        "count": len(entries),
        "newest": newest["id"] if newest else None,
        "newest_age_s": round(time.time() - newest["stopped_at"]) if newest else None,
        "newest_stored_bytes": newest["stored_bytes"] if newest else None,
        "problems": problems,
    }


@flow(name="status", log_prints=False)
def stack_status(spec: StackSpec, credentials: str = "lab") -> dict:
    """Droplets and roles, etcd health, Patroni members, HAProxy backends, service start
    times (systemd ActiveEnterTimestamp) and PostgreSQL start times."""
    hosts, remote = rm.load(spec, credentials, complete=False)
    planned = [n.name for n in spec.nodes()]
    found = {h.name for h in hosts}
    etcd_hosts = [h for h in hosts if "etcd" in h.roles]
    pg_hosts = [h for h in hosts if "postgres" in h.roles]
    members = {n.name: "" for n in spec.nodes_with("etcd")}
    members.update(etcd.members(etcd_hosts))

    droplets = []
    for host in hosts:
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
            entry["error"] = f"{type(exc).__name__}: {exc}"
        droplets.append(entry)

    status = {
        "stack": spec.name,
        "droplets": droplets,
        "missing_droplets": [n for n in planned if n not in found],
        "etcd": _first_answer(etcd_hosts, remote, lambda c, h: etcd.check(c, members).as_dict()),
        "patroni": _first_answer(
            pg_hosts,
            remote,
            lambda c, h: patroni.patroni_status(
                c,
                h.private_ip,
                [x.name for x in spec.nodes_with("postgres")],
                spec.synchronous_mode,
            ),
        ),
        "haproxy": {},
    }
    for host in (h for h in hosts if "haproxy" in h.roles):
        try:
            with remote.connect(host) as conn:
                status["haproxy"][host.name] = haproxy.haproxy_status(conn)
        except Exception as exc:  # noqa: BLE001
            status["haproxy"][host.name] = {"error": f"{type(exc).__name__}: {exc}"}
    status["backups"] = _backups(spec, credentials)
    status["ok"] = (
        not status["missing_droplets"]
        and status["etcd"].get("ok", False)
        and status["patroni"].get("ok", False)
        and not any("error" in d for d in droplets)
    )
    rm.save_pins(credentials, remote)
    get_run_logger().info("stack %s: %s", spec.name, "healthy" if status["ok"] else "NOT healthy")
    return status
