"""The WAL agent on database droplets (templates/wal): PostgreSQL's archive_command and
restore_command hand segments to one long-lived process that keeps its S3 client warm.
Placed and started before Patroni, so the first segment a new cluster archives finds it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fabric import Connection
from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.stack import StackSpec
from lifeboat.waiting import NotYet, WaitTimeout, wait_until
from tasks import sql
from tasks.hosts import Host, put, run
from tasks.render import DESTINATIONS, TEMPLATES, render

if TYPE_CHECKING:
    from tasks.context import Remote, Secrets
    from tasks.pitr import RestorePoint

UNIT = "lifeboat-wal-agent"
# Debian's bundle includes whatever CA the droplet trusts (the lab CA in the local cloud).
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def config_context(
    spec: StackSpec, spaces: dict[str, str], source: RestorePoint | None = None
) -> dict[str, str]:
    """`spaces`: endpoint, region, access_key, secret_key (from the SpacesCredentials block).
    `source`: the archive a restored cluster reads what its own lacks from (read only)."""
    context = {**spaces, "bucket": spec.bucket, "prefix": spec.name, "ca_bundle": CA_BUNDLE}
    if source is not None:
        context |= {"source_bucket": source.bucket, "source_prefix": source.stack}
    return context


def configure(
    conn: Connection, spec: StackSpec, spaces: dict[str, str], source: RestorePoint | None = None
) -> bool:
    """Place the agent, the object layout and Spaces client it imports, its scripts, config
    (0600 postgres: it holds the Spaces keys) and unit, and the base backup program;
    (re)start the agent when any of its files changed. Returns whether anything changed."""
    files = {
        # First: the agent imports them; a restart must never find the agent without them.
        "wal/spaces_layout.py": (TEMPLATES / "wal" / "spaces_layout.py").read_text(),
        "wal/spaces_client.py": (TEMPLATES / "wal" / "spaces_client.py").read_text(),
        "wal/wal_agent.py": (TEMPLATES / "wal" / "wal_agent.py").read_text(),
        "wal/archive.sh.j2": render("wal/archive.sh.j2"),
        "wal/restore.sh.j2": render("wal/restore.sh.j2"),
        "wal/wal.conf.j2": render("wal/wal.conf.j2", **config_context(spec, spaces, source)),
        "wal/lifeboat-wal-agent.service.j2": render("wal/lifeboat-wal-agent.service.j2"),
    }
    changed = False
    for template, content in files.items():
        path, owner, mode = DESTINATIONS[template]
        changed |= put(conn, path, content, mode, owner)
    # The base backup program runs on demand (the backup runbook): no restart for it.
    path, owner, mode = DESTINATIONS["wal/basebackup.py"]
    placed = put(conn, path, (TEMPLATES / "wal" / "basebackup.py").read_text(), mode, owner)
    if changed:
        run(conn, f"systemctl daemon-reload && systemctl enable --quiet {UNIT}", timeout=60)
        run(conn, f"systemctl restart {UNIT}", timeout=120)
    elif not run(conn, f"systemctl is-active --quiet {UNIT}", warn=True, timeout=30).ok:
        run(conn, f"systemctl start {UNIT}", timeout=120)
        changed = True
    return changed or placed


def verify_archiving(conn: Connection, timeout: float = 90) -> str:
    """On the primary: close the current segment and wait until PostgreSQL reports it (or
    a later one) archived. Returns the segment's name."""
    # A little WAL first (pg_switch_wal() does nothing on an idle segment start), written
    # before the switch: a logical message is logged at once, where txid_current()'s
    # commit would land after the switch, in the next segment.
    target = sql.query(
        conn,
        "SELECT pg_walfile_name(pg_switch_wal())"
        " FROM (SELECT pg_logical_emit_message(false, 'lifeboat', 'switch')) AS t",
    )

    def archived() -> bool:
        row = sql.query(
            conn,
            "SELECT coalesce(last_archived_wal, ''), failed_count, "
            "coalesce(last_failed_wal, '') FROM pg_stat_archiver",
        )
        last, failed, last_failed = row.split("|")
        # Same timeline: segment names order as strings.
        if last and last[:24] >= target:
            return True
        raise NotYet(
            f"last archived {last or 'none'}; {failed} failures, last {last_failed or '-'}"
        )

    try:
        # Polled often: a segment is archived in a fraction of a second, and every step
        # that waits here (a backup, a drill's marker) would otherwise wait a whole second.
        wait_until(f"WAL segment {target} archived on {conn.host}", archived, timeout, every=0.2)
    except WaitTimeout as e:
        raise RuntimeError(
            f"WAL segment {target} not archived after {timeout:.0f}s on {conn.host} "
            f"({e.last}); see `journalctl -u {UNIT}` there"
        ) from e
    return target


# --- Prefect tasks -------------------------------------------------------------------------


@task(name="wal_configure", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def configure_member(
    remote: Remote,
    host: Host,
    spec: StackSpec,
    spaces: Secrets,
    source: RestorePoint | None = None,
) -> bool:
    with remote.connect(host) as conn:
        return configure(conn, spec, spaces.reveal(), source)


@task(name="wal_verify", cache_policy=NO_CACHE, retries=0)
def verify(remote: Remote, leader: Host, timeout: float = 90) -> str:
    """The current segment closed on the primary and archived: its name."""
    with remote.connect(leader) as conn:
        return verify_archiving(conn, timeout=timeout)
