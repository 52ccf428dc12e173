"""The failover drill's pieces: the write probe on a web droplet (templates/drill/
write-probe.php), the faults it injects on the primary, and what its record shows (the
write gap, and whether every acknowledged write is on the new primary).

The probe writes as WordPress does, through HAProxy with the WordPress role, so what it
measures is what the site lives through. A write is acknowledged when its COMMIT
returned; with synchronous replication every acknowledged write must survive any single
failure, and the drill checks that on the new primary, key by key."""

from __future__ import annotations

import json
import shlex
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fabric import Connection
from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.stack import StackSpec
from lifeboat.waiting import NotYet, WaitTimeout, wait_until
from tasks import backup, droplets, etcd, patroni, sql, wal, wordpress
from tasks.hosts import Host, put, run
from tasks.render import TEMPLATES

if TYPE_CHECKING:
    from tasks.context import StackContext

TABLE = "lifeboat_failover_probe"
PROBE = "/usr/local/lib/lifeboat/write-probe.php"
WORK = "/var/lib/lifeboat-drill"
FAULTS = (
    "switchover",
    "stop-patroni",
    "kill-postgres",
    "power-off",
    "partition",
    "etcd-partition",
)
PARTITIONS = ("partition", "etcd-partition")
# The partitions are nftables rules on the primary itself (as on any droplet, no cloud
# API can cut one off from some peers only); a timer lifts them if the drill is lost.
NFT_TABLE = "lifeboat_drill"
HEAL_UNIT = "lifeboat-drill-heal"
HEAL_AFTER = 600  # seconds
DESTRUCTIVE = frozenset(FAULTS) - {"switchover"}


class FailoverError(RuntimeError):
    pass


class DrillRefused(RuntimeError):
    """The drill does not start: the cluster is not healthy, or the fault needs consent."""


def prepare_table(conn: Connection, spec: StackSpec) -> None:
    """On the primary: the probe's table in the WordPress database, owned by its role."""
    target = sql.Target(database=spec.wordpress.db_name)
    sql.query(
        conn,
        f"CREATE TABLE IF NOT EXISTS {TABLE} (key text PRIMARY KEY, run text NOT NULL,"
        f" at timestamptz NOT NULL); ALTER TABLE {TABLE} OWNER TO {spec.wordpress.db_user}",
        target,
    )


def _paths(run_id: str) -> tuple[str, str]:
    return f"{WORK}/{run_id}.jsonl", f"{WORK}/{run_id}.stop"


def start_probe(conn: Connection, run_id: str, max_seconds: int = 900) -> None:
    """Start writing in the background (the SSH call returns at once)."""
    put(conn, PROBE, (TEMPLATES / "drill" / "write-probe.php").read_text(), "0644", "root:root")
    out, stop = _paths(run_id)
    run(conn, f"install -d -m 0700 {WORK} && rm -f {shlex.quote(stop)}", timeout=30)
    args = shlex.join(["php", PROBE, run_id, out, stop, "0.05", "1.0", str(max_seconds)])
    run(conn, f"nohup {args} >/dev/null 2>&1 </dev/null &", timeout=30)


def stop_probe(conn: Connection, run_id: str) -> list[dict]:
    """Stop the probe, wait for it to end, and return its record (then delete it)."""
    out, stop = _paths(run_id)
    run(
        conn,
        f"touch {shlex.quote(stop)}; for i in $(seq 100); do "
        # "[/]usr/...": the pattern does not match this shell's own command line.
        f"pgrep -f {shlex.quote('[/]' + PROBE[1:] + ' ' + run_id)} >/dev/null || break; "
        "sleep 0.1; done",
        timeout=60,
    )
    text = run(conn, f"cat {shlex.quote(out)}", timeout=60).stdout
    run(conn, f"rm -f {shlex.quote(out)} {shlex.quote(stop)}", timeout=30)
    return parse_record(text)


def parse_record(text: str) -> list[dict]:
    """The probe's JSON lines; a last line caught half-written is left out."""
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


@dataclass(frozen=True)
class Gap:
    """What the record shows around the fault (seconds; epoch times on the web droplet)."""

    last_ack_before: float | None
    first_ack_after: float | None
    failed: int
    acked: int

    @property
    def seconds(self) -> float | None:
        if self.last_ack_before is None or self.first_ack_after is None:
            return None
        return self.first_ack_after - self.last_ack_before


def write_gap(record: list[dict], fault_at: float) -> Gap:
    """The write gap: the longest stretch without an acknowledgement that ends after the
    fault began (a switchover or a stop takes a while to bite, so the last write before
    the fault is not where the outage starts); from the acknowledgement before it to
    the one that ended it. Acknowledged = COMMIT returned; times are when answers came."""
    acks = sorted(r["done"] for r in record if r["ok"])
    failed = sum(1 for r in record if not r["ok"])
    pairs = [(a, b) for a, b in zip(acks, acks[1:], strict=False) if b > fault_at]
    if not pairs:
        before = [t for t in acks if t <= fault_at]
        return Gap(max(before) if before else None, None, failed, len(acks))
    start, end = max(pairs, key=lambda p: p[1] - p[0])
    return Gap(start, end, failed, len(acks))


def lost_writes(conn: Connection, spec: StackSpec, run_id: str, record: list[dict]) -> list[str]:
    """On the new primary: acknowledged keys that are not there (must be none)."""
    target = sql.Target(database=spec.wordpress.db_name)
    stored = set(
        sql.query(
            conn, f"SELECT key FROM {TABLE} WHERE run = {sql.literal(run_id)}", target
        ).split()
    )
    return [r["key"] for r in record if r["ok"] and r["key"] not in stored]


def timeline_chart(record: list[dict], fault_at: float, width_s: float = 0.25) -> str:
    """Acknowledged and failed writes over time, one character per `width_s` seconds:
    '#' only acknowledged, 'x' only failed, '+' both, ' ' no attempt ended; '|' marks
    the fault. For a person in the Prefect UI (a code block in a markdown artifact)."""
    if not record:
        return "(no writes recorded)"
    t0 = min(r["sent"] for r in record)
    slots: dict[int, set[bool]] = {}
    for r in record:
        slots.setdefault(int((r["done"] - t0) / width_s), set()).add(bool(r["ok"]))
    fault_slot = int((fault_at - t0) / width_s)
    chars = []
    for i in range(max(slots) + 1):
        seen = slots.get(i, set())
        char = {frozenset({True}): "#", frozenset({False}): "x"}.get(frozenset(seen), "+")
        chars.append(" " if not seen else char)
        if i == fault_slot:
            chars[-1] = "|"
    lines = ["".join(chars[i : i + 80]) for i in range(0, len(chars), 80)]
    return f"one character = {width_s} s from the first write; | = the fault\n" + "\n".join(lines)


# --- faults, on the primary over SSH (power-off goes through the DigitalOcean API) --------


def stop_patroni(conn: Connection) -> None:
    """systemctl stop: Patroni stops PostgreSQL and gives up the leader key."""
    run(conn, "systemctl stop patroni", timeout=120)


def kill_postgres(conn: Connection) -> None:
    """kill -9 of the postmaster: Patroni restarts it (crash recovery) or fails over."""
    run(
        conn,
        "kill -9 $(head -1 /var/lib/postgresql/15/patroni/postmaster.pid)",
        timeout=30,
    )


def partition_rules(fault: str, etcd_peers: list[str]) -> str:
    """The nftables script of a partition on the primary.
    - partition: cut off from everything but SSH (the drill's own control, from the
      admin addresses), its clients included: it can acknowledge nothing.
    - etcd-partition: cut off from the other etcd members only (client and peer ports,
      both ways); its clients and replicas still reach it, so until Patroni demotes it
      (it cannot renew its leader key) it is the one isolated primary that could
      acknowledge writes."""
    if fault == "partition":
        return (
            f"table inet {NFT_TABLE} {{\n"
            "  chain input { type filter hook input priority -10; policy drop;"
            ' iif "lo" accept; tcp dport 22 accept; }\n'
            "  chain output { type filter hook output priority -10; policy drop;"
            ' oif "lo" accept; tcp sport 22 accept; }\n'
            "}\n"
        )
    if not etcd_peers:
        raise DrillRefused("etcd-partition needs etcd members other than the primary")
    peers = ", ".join(etcd_peers)
    ports = f"{{ {etcd.CLIENT_PORT}, {etcd.PEER_PORT} }}"
    return (
        f"table inet {NFT_TABLE} {{\n"
        f"  set peers {{ type ipv4_addr; elements = {{ {peers} }}; }}\n"
        "  chain input { type filter hook input priority -10; policy accept;"
        f" ip saddr @peers tcp dport {ports} drop; ip saddr @peers tcp sport {ports} drop; }}\n"
        "  chain output { type filter hook output priority -10; policy accept;"
        f" ip daddr @peers tcp dport {ports} drop; ip daddr @peers tcp sport {ports} drop; }}\n"
        "}\n"
    )


def cut_off(conn: Connection, script: str) -> None:
    """The heal timer first (so a lost drill never leaves a partitioned primary), then the
    rules, atomically."""
    heal(conn)
    run(
        conn,
        f"systemd-run --quiet --unit={HEAL_UNIT} --on-active={HEAL_AFTER} "
        f"/usr/sbin/nft delete table inet {NFT_TABLE}",
        timeout=30,
    )
    put(conn, f"{WORK}/partition.nft", script, "0600", "root:root")
    run(conn, f"nft -f {WORK}/partition.nft", timeout=30)


def heal(conn: Connection) -> None:
    """The partition lifted, and its timer gone (both may already be)."""
    run(
        conn,
        f"nft delete table inet {NFT_TABLE} 2>/dev/null; "
        f"systemctl stop {HEAL_UNIT}.timer 2>/dev/null; true",
        timeout=30,
    )


# --- Prefect tasks -------------------------------------------------------------------------


def check_fault(fault: str, allow_destructive: bool) -> None:
    """Before anything is touched: a known fault, and consent for a destructive one."""
    if fault not in FAULTS:
        raise DrillRefused(f"unknown fault {fault!r}: choose one of {', '.join(FAULTS)}")
    if fault in DESTRUCTIVE and not allow_destructive:
        raise DrillRefused(
            f"fault {fault} takes the primary down hard: rerun with --allow-destructive "
            "(switchover is the planned one, and needs nothing)"
        )


def _members(ctx: StackContext, exclude: str | None = None) -> list[patroni.Member]:
    """Patroni's view from the first database droplet (other than `exclude`) that answers
    (`backup.members`); NotYet while none does."""
    hosts = [h for h in ctx.with_role("postgres") if h.name != exclude]
    try:
        return backup.members(ctx.remote, hosts)
    except backup.BackupError as e:
        raise NotYet(str(e)) from None


def _healthy(ctx: StackContext, timeout: float) -> list[patroni.Member]:
    return patroni.verify(ctx.remote, ctx.with_role("postgres"), ctx.spec, timeout=timeout)


def _power(ctx: StackContext, host: Host, action: str) -> None:
    """A droplet action through the DigitalOcean API ("power_off", "power_on")."""
    what = f"{action.replace('_', ' ')} of {host.name}"
    droplets.call(
        what, ctx.do.droplet_actions.post, droplet_id=host.droplet_id, body={"type": action}
    )


@task(name="precheck", cache_policy=NO_CACHE, retries=0)
def precheck(ctx: StackContext) -> list[patroni.Member]:
    """Healthy cluster and current archive, or DrillRefused saying why."""
    try:
        members = _healthy(ctx, timeout=30)
    except patroni.PatroniError as e:
        raise DrillRefused(f"the cluster is not healthy, so no drill: {e}") from None
    leader = next(m for m in members if m.is_leader)
    with ctx.remote.connect(ctx.host(leader.name)) as conn:
        try:
            wal.verify_archiving(conn, timeout=120)
        except RuntimeError as e:
            raise DrillRefused(f"archiving is not current, so no drill: {e}") from None
        prepare_table(conn, ctx.spec)
    return members


@task(name="fault", cache_policy=NO_CACHE, retries=0)
def inject(ctx: StackContext, fault: str, leader: Host, candidate: str) -> tuple[float, float]:
    """The fault; returns when it began and when the call that made it returned (epoch
    seconds): the gap is measured from the first, new writes are awaited after the
    second (a write acknowledged while a kill was on its way proves nothing)."""
    at = time.time()
    if fault == "power-off":
        _power(ctx, leader, "power_off")
        ctx.remote.drop(leader)  # its connection is dead: never reuse it
        return at, time.time()
    with ctx.remote.connect(leader) as conn:
        if fault == "switchover":
            patroni.switchover(conn, ctx.spec, leader.name, candidate)
        elif fault == "stop-patroni":
            stop_patroni(conn)
        elif fault in PARTITIONS:
            peers = [h.private_ip for h in ctx.with_role("etcd") if h.name != leader.name]
            cut_off(conn, partition_rules(fault, peers))
        else:
            kill_postgres(conn)
    return at, time.time()


@task(name="new_leader", cache_policy=NO_CACHE, retries=0)
def wait_leader(ctx: StackContext, old: str, fault: str, timeout: float = 180) -> float:
    """A running leader (another one, unless the fault lets the old one keep its key);
    returns when it was seen (epoch seconds)."""

    def leader() -> str:
        # A cut-off primary still answers for itself (with its last view): ask the others.
        gone = fault == "power-off" or fault in PARTITIONS
        members = _members(ctx, exclude=old if gone else None)
        lead = [m for m in members if m.is_leader and m.state == "running"]
        if not lead or (fault != "kill-postgres" and lead[0].name == old):
            raise NotYet(", ".join(f"{m.name} {m.role} {m.state}" for m in members))
        return lead[0].name

    try:
        wait_until("a new leader", leader, timeout, every=0.2)
    except WaitTimeout as e:
        raise FailoverError(f"no leader took over in {timeout:.0f} s: {e.last}") from e
    return time.time()


@task(name="restore_member", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def put_back(ctx: StackContext, fault: str, old: Host) -> None:
    """What the drill broke, repaired: the droplet powered on, Patroni started."""
    if fault == "power-off":
        _power(ctx, old, "power_on")
    elif fault == "stop-patroni":
        with ctx.remote.connect(old) as conn:
            run(conn, "systemctl start patroni", timeout=120)
    elif fault in PARTITIONS:
        with ctx.remote.connect(old) as conn:
            heal(conn)


@task(name="healthy_again", cache_policy=NO_CACHE, retries=0)
def wait_back(ctx: StackContext, fault_at: float) -> dict:
    """The cluster healthy again (the old primary rejoined as a replica, or still leader
    after a kill): the leader, its timeline, and the seconds since the fault."""
    deadline = 300
    while True:
        try:
            members = _healthy(ctx, timeout=deadline)
            break
        except patroni.PatroniError as e:
            raise FailoverError(f"the cluster is not healthy again: {e}") from None
        except Exception:  # noqa: BLE001 - the first droplet asked may be the one coming back
            if time.time() - fault_at > deadline:
                raise
            time.sleep(2)
    leader = next(m for m in members if m.is_leader)
    return {
        "leader": leader.name,
        "timeline": leader.timeline,
        "seconds": round(time.time() - fault_at, 1),
    }


# Patroni's own words in its journal (patroni/postgresql/rewind.py, ha.py, 4.1).
REWIND_RAN = "running pg_rewind from"
REWIND_OK = "pg_rewind exit code=0"
REINIT = ("reinitializing due to", "Removing data directory")


def how_it_returned(journal: str, still_leader: bool) -> str:
    """The old primary's way back, from Patroni's journal on it since the fault."""
    if still_leader:
        return "kept the leader role (no failover)"
    if any(word in journal for word in REINIT):
        return "rebuilt from the new leader (data directory removed)"
    if REWIND_RAN in journal:
        if REWIND_OK in journal:
            return "rejoined as a replica after pg_rewind"
        return "pg_rewind did not succeed: see Patroni's journal on the old primary"
    return "rejoined as a replica without pg_rewind"


@task(name="old_primary_return", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def old_primary_return(ctx: StackContext, old: Host, fault_at: float, leader: str) -> str:
    """How the old primary came back (with or without pg_rewind, rebuilt, or still the
    leader), read from Patroni's journal on it since the fault."""
    with ctx.remote.connect(old) as conn:
        journal = run(
            conn,
            f"journalctl -u patroni --since @{int(fault_at) - 1} --no-pager -o cat "
            "| grep -E 'pg_rewind|reinitializ|Removing data directory' || true",
            timeout=60,
        ).stdout
    return how_it_returned(journal, still_leader=old.name == leader)


class SiteProbe:
    """The site's front page through the load balancer, asked from the orchestrator as a
    visitor asks it, every `interval` s in a thread while the drill runs. Its records are
    the write probe's shape ({"sent", "done", "ok", "error"}), so `write_gap` gives the
    site's gap too. A page counts when it is HTTP 200 (WordPress answers 500 without its
    database; the load balancer 503 without a healthy droplet)."""

    def __init__(self, url: str, host: str, interval: float = 0.2, deadline: float = 2.0):
        self.url, self.headers = url, {"Host": host}
        self.interval, self.deadline = interval, deadline
        self.record: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="site-probe", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            sent = time.time()
            code, _, body = wordpress.http_get(self.url, self.deadline, self.headers)
            done = time.time()
            error = "" if code == 200 else (f"HTTP {code}" if code else body[:200])
            self.record.append({"sent": sent, "done": done, "ok": code == 200, "error": error})
            self._stop.wait(max(0.0, self.interval - (done - sent)))

    def served_since(self, since: float) -> bool:
        return any(r["ok"] and r["done"] > since for r in list(self.record))

    def __enter__(self) -> SiteProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.deadline + 5)


def site_probe(ctx: StackContext) -> SiteProbe:
    lb = wordpress.load_balancer(ctx.do, ctx.spec)
    return SiteProbe(f"http://{lb['ip']}/", ctx.spec.wordpress.site_domain(ctx.spec.name))


@task(name="site_again", cache_policy=NO_CACHE, retries=0)
def wait_site(site: SiteProbe, since: float, timeout: float = 60) -> bool:
    """Until the front page was served after `since`; False (reported, not raised: the
    write figures stand) when it was not within `timeout`."""
    try:
        return wait_until(
            "a page served after the fault", lambda: site.served_since(since), timeout
        )
    except WaitTimeout:
        return False


@task(name="probe_start", cache_policy=NO_CACHE, retries=0)
def probe_start(ctx: StackContext, web: Host, run_id: str) -> None:
    with ctx.remote.connect(web) as conn:
        start_probe(conn, run_id)


@task(name="probe_stop", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def probe_stop(ctx: StackContext, web: Host, run_id: str) -> list[dict]:
    with ctx.remote.connect(web) as conn:
        return stop_probe(conn, run_id)


@task(name="writes_again", cache_policy=NO_CACHE, retries=0)
def wait_writes(
    ctx: StackContext, web: Host, run_id: str, since: float, timeout: float = 120
) -> float:
    """Until the probe has a write acknowledged after `since` (the new leader seen):
    a leader that holds the key is not yet one that commits (after a kill, Patroni
    restarts PostgreSQL first). Returns when that acknowledgement came."""
    out, _ = _paths(run_id)
    with ctx.remote.connect(web) as conn:

        def acked() -> float:
            tail = run(conn, f"tail -n 40 {shlex.quote(out)}", warn=True, timeout=30).stdout
            done = [r["done"] for r in parse_record(tail) if r["ok"]]
            fresh = [t for t in done if t > since]
            if not fresh:
                raise NotYet(f"{len(done)} of the last 40 attempts acknowledged, none since")
            return min(fresh)

        try:
            return wait_until("a write acknowledged after the fault", acked, timeout, every=0.5)
        except WaitTimeout as e:
            raise FailoverError(
                f"no write acknowledged {timeout:.0f} s after the fault: {e.last}"
            ) from e


@task(name="check_writes", cache_policy=NO_CACHE, retries=0)
def check_writes(
    ctx: StackContext, leader: str, run_id: str, record: list[dict]
) -> tuple[list[str], str]:
    """On the leader: the acknowledged writes that are missing (must be none), and a WAL
    segment closed and archived (archiving survived the fault)."""
    with ctx.remote.connect(ctx.host(leader)) as conn:
        lost = lost_writes(conn, ctx.spec, run_id, record)
        return lost, wal.verify_archiving(conn, timeout=180)


@dataclass
class Window:
    """What the fault window saw: the write probe's record, the site probe's, and when the
    fault was injected and a new leader seen (epoch seconds)."""

    writes: list[dict]
    pages: list[dict]
    fault_at: float
    leader_at: float


def fault_window(
    ctx: StackContext, fault: str, web: Host, run_id: str, old: str, candidate: str
) -> Window:
    """The probes run; the fault hits the primary `old`; the window closes once a write
    was acknowledged after a new leader was seen and the site served a page again. The
    cluster is put back whatever happens (the droplet powered on, the network healed)."""
    old_host = ctx.host(old)
    probe_start(ctx, web, run_id)
    site = site_probe(ctx)
    try:
        with site:
            time.sleep(3)  # writes before the fault: the gap needs a last ack before it
            fault_at, injected = inject(ctx, fault, old_host, candidate)
            leader_at = wait_leader(ctx, old, fault)
            writes_at = wait_writes(ctx, web, run_id, max(injected, leader_at))
            wait_site(site, writes_at)
            time.sleep(2)  # a little more: the gaps are measured up to those first acks
    finally:
        record = probe_stop(ctx, web, run_id)
        put_back(ctx, fault, old_host)
    return Window(record, site.record, fault_at, leader_at)
