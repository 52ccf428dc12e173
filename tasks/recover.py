"""Recovery runbooks' pieces: a planned switchover to a chosen member, a member's data
directory rebuilt from the leader (reinit), a lost droplet retired so that a new one can
take its place (replace). Each refuses what Patroni would do
wrong or not at all (a candidate that is not a healthy replica, reinit of the leader)
before touching anything, and waits for the result it promised."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import TYPE_CHECKING

from prefect import task
from prefect.cache_policies import NO_CACHE

from lifeboat.waiting import NotYet, WaitTimeout, wait_until
from tasks import backup, droplets, haproxy, patroni, wal
from tasks.hosts import Host, run

if TYPE_CHECKING:
    from tasks.context import StackContext


class RecoverError(RuntimeError):
    pass


def pick_candidate(
    members: list[patroni.Member], to: str | None, synchronous: bool = False
) -> tuple[str, str]:
    """(leader, candidate): `to`, or the synchronous standby, or the healthiest replica.
    A candidate must be a running replica of the cluster; in synchronous mode Patroni
    promotes only the synchronous standby (any other could lack acknowledged commits)."""
    leaders = [m.name for m in members if m.is_leader]
    if len(leaders) != 1:
        raise RecoverError(f"the cluster has {len(leaders)} leaders ({leaders}): no switchover")
    replicas = [m for m in members if not m.is_leader and m.state in ("streaming", "running")]
    names = ", ".join(m.name for m in replicas) or "none"
    if to is not None:
        if to == leaders[0]:
            raise RecoverError(f"{to} is already the leader; replicas: {names}")
        if to not in {m.name for m in replicas}:
            raise RecoverError(f"{to} is not a running replica of the cluster; replicas: {names}")
        sync = [m.name for m in replicas if m.role == "sync_standby"]
        if synchronous and to not in sync:
            raise RecoverError(
                f"{to} is not the synchronous standby ({', '.join(sync) or 'none'}): in "
                "synchronous mode only it may take over, since only it holds every "
                "acknowledged commit; name it, or leave --to out"
            )
        return leaders[0], to
    ordered = sorted(replicas, key=lambda m: (m.role != "sync_standby", m.lag or 0))
    if not ordered:
        raise RecoverError("no running replica to switch over to")
    return leaders[0], ordered[0].name


def _members(ctx: StackContext) -> list[patroni.Member]:
    return backup.members(ctx.remote, ctx.require_role("postgres"))


def verified(ctx: StackContext, leader: str | None, timeout: float = 180) -> dict:
    """The cluster healthy, every HAProxy routing its primary port to `leader` (None:
    whichever member leads), and a WAL segment archived from it; with its timeline."""
    pg_hosts = ctx.require_role("postgres")
    members = patroni.verify(ctx.remote, pg_hosts, ctx.spec, timeout=timeout)
    lead = next(m for m in members if m.is_leader)
    if leader is not None and lead.name != leader:
        raise RecoverError(f"the leader is {lead.name}, not {leader}")
    replicas = sorted(m.name for m in members if not m.is_leader)
    for host in ctx.with_role("haproxy"):
        with ctx.remote.connect(host) as conn:
            haproxy.wait_backends(conn, lead.name, replicas, timeout=60)
    with ctx.remote.connect(ctx.host(lead.name)) as conn:
        archived = wal.verify_archiving(conn, timeout=180)
    return {
        "leader": lead.name,
        "replicas": replicas,
        "archived": archived,
        "timeline": lead.timeline,
    }


def _await(
    ctx: StackContext,
    what: str,
    wrong: Callable[[list[patroni.Member]], str | None],
    timeout: float = 600,
) -> None:
    """Poll Patroni's view until `wrong` finds nothing wrong; RecoverError saying what."""

    def settled() -> bool:
        why = wrong(_members(ctx))
        if why:
            raise NotYet(why)
        return True

    try:
        wait_until(what, settled, timeout, every=0.5)
    except WaitTimeout as e:
        raise RecoverError(f"not {what} after {timeout:.0f} s: {e.last}") from e


def _not_streaming(members: list[patroni.Member], name: str) -> str | None:
    mine = next((m for m in members if m.name == name), None)
    return (
        None
        if mine and mine.state == "streaming"
        else f"{name}: {mine.state if mine else 'not listed'}"
    )


@task(name="switchover", cache_policy=NO_CACHE, retries=0)
def switch(ctx: StackContext, to: str | None) -> dict:
    members = _members(ctx)
    leader, candidate = pick_candidate(members, to, ctx.spec.synchronous_mode)
    with ctx.remote.connect(ctx.host(leader)) as conn:
        patroni.switchover(conn, ctx.spec, leader, candidate)

    _await(
        ctx,
        f"{candidate} leading",
        lambda ms: None if [m.name for m in ms if m.is_leader] == [candidate] else "not yet",
        timeout=120,
    )
    result = verified(ctx, candidate)
    return {"old_leader": leader, **result}


@task(name="reinit", cache_policy=NO_CACHE, retries=0)
def reinit(ctx: StackContext, member: str) -> dict:
    """`patronictl reinit`: the member's data directory is wiped and taken again from the
    leader; refused for the leader itself (switch over first)."""
    members = _members(ctx)
    names = {m.name: m for m in members}
    if member not in names:
        known = ", ".join(sorted(names)) or "none"
        raise RecoverError(f"{member} is not a member of the cluster; members: {known}")
    if names[member].is_leader:
        raise RecoverError(
            f"{member} is the leader: switch over first (`lifeboat recover switchover`)"
        )
    host = ctx.host(member)
    with ctx.remote.connect(host) as conn:
        run(
            conn,
            f"{patroni.PATRONICTL} reinit {shlex.quote(ctx.spec.name)} {shlex.quote(member)}"
            " --force --wait",
            timeout=1800,
        )

    _await(ctx, f"{member} streaming again after reinit", lambda ms: _not_streaming(ms, member))
    leader = next(m.name for m in members if m.is_leader)
    return {"member": member, **verified(ctx, leader)}


# Patroni states a member does not leave by itself: rebuilt at once, not waited for.
STUCK = ("start failed", "crashed")


@task(name="rejoin", cache_policy=NO_CACHE, retries=0)
def rejoin(ctx: StackContext, timeout: float = 600) -> dict[str, str]:
    """After a failover: every database member back and streaming. A returning old
    primary rewinds and rejoins by itself (use_pg_rewind), so members are waited for up
    to `timeout`; one that is back but stuck (start failed, crashed), or still not
    streaming at the end, is rebuilt from the leader (reinit). A member that never came
    back is an error naming it. Returns what happened to each replica."""
    expected = [n.name for n in ctx.spec.nodes_with("postgres")]
    outcome: dict[str, str] = {}

    def settled() -> bool:
        by_name = {m.name: m for m in _members(ctx)}
        waiting = []
        for name in expected:
            m = by_name.get(name)
            if m is not None and m.is_leader:
                continue
            if m is not None and m.state in STUCK and name not in outcome:
                outcome[name] = f"was {m.state!r}: rebuilt from the leader"
                reinit.fn(ctx, name)
            elif m is None or m.state != "streaming":
                waiting.append(f"{name}: {m.state if m else 'not in the cluster'}")
        if waiting:
            raise NotYet("; ".join(waiting))
        return True

    try:
        wait_until("every member streaming", settled, timeout, every=2)
    except WaitTimeout as e:
        by_name = {m.name: m for m in _members(ctx)}
        gone = [n for n in expected if n not in by_name]
        if gone:
            raise RecoverError(
                f"{', '.join(gone)} not back in the cluster after {timeout:.0f} s ({e.last}): "
                "power the droplet on, or replace it"
            ) from e
        for name in expected:
            m = by_name[name]
            if not m.is_leader and m.state != "streaming" and name not in outcome:
                outcome[name] = f"still {m.state!r} after {timeout:.0f} s: rebuilt from the leader"
                reinit.fn(ctx, name)
    members = _members(ctx)
    for m in members:
        if not m.is_leader:
            outcome.setdefault(m.name, "streaming")
    return outcome


@task(name="verify", cache_policy=NO_CACHE, retries=0)
def verify(ctx: StackContext, timeout: float = 180) -> dict:
    """`verified` under whichever member leads now (once: one health wait, one archive
    check)."""
    return verified(ctx, None, timeout)


def _droplet(ctx: StackContext, name: str) -> dict | None:
    return next((d for d in droplets.stack_droplets(ctx.do, ctx.spec) if d["name"] == name), None)


def refuse_retire(
    planned: dict[str, tuple[str, ...]],
    member: str,
    status: str | None,
    members: list[patroni.Member] | None,
    allow_running: bool,
) -> str | None:
    """Why droplet `member` (DigitalOcean status `status`, None when gone) must not be
    replaced now, or None. `planned`: {droplet name: roles}; `members`: Patroni's view
    (None when the droplet holds no database)."""
    if member not in planned:
        return f"{member} is not a droplet of the stack; its droplets: {', '.join(planned)}"
    if members is not None:
        leaders = [m.name for m in members if m.is_leader]
        if member in leaders:
            return (
                f"{member} is the leader: switch over first (`lifeboat recover switchover`), "
                "or, if it is dead, wait for the failover"
            )
        if not leaders:
            return (
                "the cluster has no leader to clone a new member from: recover the cluster "
                "first (a failover, or a restore)"
            )
    if status == "active" and not allow_running:
        return (
            f"{member} is running (status active): replacing destroys it; power it off "
            "first, or pass --allow-destructive"
        )
    return None


@task(name="retire", cache_policy=NO_CACHE, retries=0)
def retire(ctx: StackContext, member: str, allow_running: bool = False) -> dict:
    """Droplet `member` destroyed (if it still exists) after the checks in
    `refuse_retire`, so that provisioning creates a new one of the same name, roles and
    tags. Its place in the load balancer and firewalls goes with it; its etcd record is
    replaced when the new one joins (`etcd.admit`), its Patroni key expires (ttl).
    Returns {"old_droplet", "old_status"}."""
    planned = {n.name: n.roles for n in ctx.spec.nodes()}
    found = _droplet(ctx, member)
    status = found["status"] if found else None
    members = None
    if member in planned and "postgres" in planned[member]:
        others = [h for h in ctx.with_role("postgres") if h.name != member]
        try:
            members = backup.members(ctx.remote, others)
        except backup.BackupError:
            members = []  # nobody answers: no leader
    why = refuse_retire(planned, member, status, members, allow_running)
    if why:
        raise RecoverError(why)
    if found is None:
        return {"old_droplet": None, "old_status": "gone"}
    ctx.remote.forget(Host.from_droplet(found))  # off droplets too: no pin left behind
    droplets.call(f"destroying droplet {member}", ctx.do.droplets.destroy, droplet_id=found["id"])

    def gone() -> bool:
        if _droplet(ctx, member) is not None:
            raise NotYet(f"{member} still listed")
        return True

    try:
        wait_until(f"{member} destroyed", gone, 300, every=1)
    except WaitTimeout as e:
        raise RecoverError(str(e)) from e
    ctx.hosts = [h for h in ctx.hosts if h.name != member]
    return {"old_droplet": found["id"], "old_status": status}


def new_droplet(ctx: StackContext, member: str, old_id: int | None) -> Host:
    """The droplet that replaced `member`: listed, active, another ID."""
    host = ctx.hosts_by_name.get(member)
    if host is None or host.droplet_id == old_id:
        raise RecoverError(f"no new droplet {member} after provisioning")
    return host
