"""The droplets' Debian packages (tasks/packages.txt), and Debian's own PostgreSQL cluster
out of the way of Patroni's.

apt runs only when `dpkg-query` says something is missing: droplets may have no internet
(the lab's never do), and a no-op run must not touch apt at all.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from fabric import Connection
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import etcd, haproxy, sql
from tasks.hosts import Host, run

if TYPE_CHECKING:
    from tasks.context import Remote

MANIFEST = Path(__file__).resolve().parent / "packages.txt"
APT_TIMEOUT = 900
# Debian's postgresql-15 package creates and starts this cluster on install.
DEFAULT_CLUSTER = ("15", "main")


class PackageError(RuntimeError):
    pass


def manifest(path: Path = MANIFEST) -> list[str]:
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


def missing_from(dpkg_output: str, wanted: list[str]) -> list[str]:
    """Packages of `wanted` that `dpkg-query -W -f '${Package} ${db:Status-Status}\\n'` does
    not report as installed (absent packages are not listed at all)."""
    installed = set()
    for line in dpkg_output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1] == "installed":
            installed.add(parts[0].split(":", 1)[0])  # strip an ":amd64" qualifier
    return [p for p in wanted if p not in installed]


def install_packages(conn: Connection, packages: list[str] | None = None) -> bool:
    """Install what is missing; returns whether apt ran."""
    wanted = packages if packages is not None else manifest()
    names = " ".join(shlex.quote(p) for p in wanted)
    fmt = shlex.quote("${Package} ${db:Status-Status}\\n")
    # dpkg-query exits 1 when some package is unknown: its output is still what we need.
    probe = run(conn, f"dpkg-query -W -f {fmt} {names} 2>/dev/null", warn=True, timeout=60)
    missing = missing_from(probe.stdout, wanted)
    if not missing:
        return False
    env = "DEBIAN_FRONTEND=noninteractive"
    res = run(
        conn,
        f"apt-get update -qq && {env} apt-get install -y -qq --no-install-recommends "
        + " ".join(shlex.quote(p) for p in missing),
        warn=True,
        timeout=APT_TIMEOUT,
    )
    if not res.ok:
        raise PackageError(
            f"apt could not install {', '.join(missing)} on {conn.host}: "
            f"{(res.stderr or res.stdout).strip()[-1500:]}"
        )
    return True


def drop_default_cluster(conn: Connection) -> bool:
    """Remove Debian's `15/main` cluster (stopped, its data and config deleted), so it can
    neither hold port 5432 and the socket Patroni's PostgreSQL needs nor come back at the
    next boot or package upgrade. Refuses if it holds a database someone created.
    Returns whether anything changed."""
    version, name = DEFAULT_CLUSTER
    listed = run(conn, "pg_lsclusters --no-header 2>/dev/null", warn=True, timeout=30)
    present = any(
        line.split()[:2] == [version, name] for line in listed.stdout.splitlines() if line.strip()
    )
    if not present:
        return False
    query = (
        "SELECT datname FROM pg_database "
        "WHERE datname NOT IN ('postgres', 'template0', 'template1')"
    )
    user_dbs = sql.psql(conn, query, sql.Target(cluster=f"{version}/{name}"), warn=True)
    if user_dbs.ok and user_dbs.stdout.strip():
        raise PackageError(
            f"{conn.host}: Debian's PostgreSQL cluster {version}/{name} holds databases "
            f"({', '.join(user_dbs.stdout.split())}); Lifeboat will not delete them. Move them "
            f"away and run `pg_dropcluster --stop {version} {name}`, then rerun."
        )
    run(conn, f"pg_dropcluster --stop {version} {name}", timeout=120)
    return True


# --- Prefect tasks -------------------------------------------------------------------------


@task(name="prepare", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def prepare(remote: Remote, host: Host) -> dict:
    """Packages from the manifest; Debian's default PostgreSQL cluster dropped; Debian's
    default etcd / HAProxy stopped where the host has no such role."""
    done = []
    with remote.connect(host) as conn:
        if install_packages(conn):
            done.append("packages installed")
        if drop_default_cluster(conn):
            done.append("dropped Debian's 15/main cluster")
        if "etcd" not in host.roles and etcd.disable(conn):
            done.append("stopped unused etcd")
        if "haproxy" not in host.roles and haproxy.disable(conn):
            done.append("stopped unused haproxy")
    return {"changed": bool(done), "detail": ", ".join(done)}
