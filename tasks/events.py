"""Events from the cluster (templates/events): Patroni's role-change callback on each
database droplet spools a Prefect event and returns at once; lifeboat-events posts the
spool to the server at the spec's `events.api_url` (a path unit starts it when the spool
changes, a timer retries every 30 s), so an event made while the server is unreachable
arrives later. Placed before Patroni starts, so its first promotion is reported too."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fabric import Connection
from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.stack import StackSpec
from tasks.hosts import Host, put, run
from tasks.render import DESTINATIONS, TEMPLATES, render

if TYPE_CHECKING:
    from tasks.context import Remote

SPOOL = "/var/spool/lifeboat-events"
# Event names (automations match on them): a member became primary (posted by the
# droplet's callback, templates/events/cluster_events.py), a base backup was cataloged.
PROMOTED = "lifeboat.patroni.role.primary"
BACKUP_SUCCEEDED = "lifeboat.backup.succeeded"
UNITS = ("lifeboat-events.path", "lifeboat-events.timer")


def files(spec: StackSpec, member: str) -> dict[str, str]:
    """The rendered files by template name (tests render and verify the same)."""
    return {
        "events/cluster_events.py": (TEMPLATES / "events" / "cluster_events.py").read_text(),
        "events/events.conf.j2": render(
            "events/events.conf.j2", api_url=spec.events.api_url, stack=spec.name, member=member
        ),
        "events/lifeboat-events.service.j2": render("events/lifeboat-events.service.j2"),
        "events/lifeboat-events.path.j2": render("events/lifeboat-events.path.j2"),
        "events/lifeboat-events.timer.j2": render("events/lifeboat-events.timer.j2"),
    }


def configure(conn: Connection, spec: StackSpec, member: str) -> bool:
    """Place the program, its config and units; the spool (postgres only); the path unit
    and the timer enabled and running. Returns whether anything changed."""
    changed = False
    for template, content in files(spec, member).items():
        path, owner, mode = DESTINATIONS[template]
        changed |= put(conn, path, content, mode, owner)
    run(conn, f"install -d -o postgres -g postgres -m 0700 {SPOOL}", timeout=30)
    units = " ".join(UNITS)
    if changed:
        run(conn, "systemctl daemon-reload", timeout=60)
        run(conn, f"systemctl enable --quiet {units} && systemctl restart {units}", timeout=60)
    elif not run(conn, f"systemctl is-active --quiet {units}", warn=True, timeout=30).ok:
        run(conn, f"systemctl enable --quiet --now {units}", timeout=60)
        changed = True
    return changed


def stack_resource(spec: StackSpec) -> dict[str, str]:
    """The resource a stack's own events are about (its label is what automations match)."""
    return {
        "prefect.resource.id": f"lifeboat.stack.{spec.name}",
        "prefect.resource.name": spec.name,
        "lifeboat.stack": spec.name,
    }


def backup_succeeded(spec: StackSpec, report: dict) -> None:
    """The event the missing-backup automation waits for."""
    from prefect.events import emit_event

    payload = {k: report[k] for k in ("id", "timeline", "stored_bytes", "seconds")}
    emit_event(event=BACKUP_SUCCEEDED, resource=stack_resource(spec), payload=payload)


@task(name="events_configure", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def configure_member(remote: Remote, host: Host, spec: StackSpec) -> bool:
    with remote.connect(host) as conn:
        return configure(conn, spec, host.name)
