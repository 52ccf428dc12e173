"""The web tier on the session's example stacks (brought up by `up`, which ends with the
wordpress runbook): the health endpoint through the load balancer, a rerun that touches
nothing, a powered-off web droplet, a broken droplet stopping a rollout, a Patroni
switchover the web tier follows without being touched, and a flood of the health
endpoint from one client. Each test that breaks something
puts the stack back."""

from __future__ import annotations

import json
import threading
import time

import pydo
import pytest

from flows.wordpress import wordpress
from tasks import context as rm
from tasks import patroni
from tasks import wordpress as wp
from tasks.hosts import Host, run
from tests.e2e.conftest import (
    EXAMPLES,
    cluster_members,
    leader,
    power_on,
    site_serves_from_every_web_droplet,
    stack,
    wait_for,
)

pytestmark = pytest.mark.e2e

UNITS = ("nginx", wp.PHP_FPM)


def web_hosts(spec, credentials: str) -> tuple[list[Host], rm.Remote]:
    hosts, remote = rm.load(spec, credentials)
    return [h for h in hosts if "wordpress" in h.roles], remote


def health(lb: dict) -> tuple[bool, dict]:
    code, _, body = wp.http_get(wp.lb_health_url(lb), timeout=5)
    healthy, _ = wp.parse_health(code, body)
    try:
        data = json.loads(body)
    except ValueError:
        data = {"status": code, "body": body[:200]}
    return healthy, data


def started_at(remote: rm.Remote, host: Host) -> str:
    """Each web service's main PID and when it last became active (a restart changes
    them), and nginx's worker PIDs (a reload replaces them; php-fpm's dynamic pool forks
    workers on its own, so its workers say nothing)."""
    show = "systemctl show -p MainPID -p ActiveEnterTimestampMonotonic " + " ".join(UNITS)
    workers = "ps -o pid= --ppid $(systemctl show -p MainPID --value nginx) | sort"
    with remote.connect(host) as conn:
        return run(conn, f"{show}; {workers}").stdout


@pytest.mark.parametrize("name", EXAMPLES)
def test_health_through_load_balancer(stacks: dict, name: str, do: pydo.Client) -> None:
    spec, report = stack(stacks, name)
    web = report["wordpress"]
    assert web["steps"]["verified"].startswith("HTTP 200")
    print(f"{name}: wordpress rollout from nothing, seconds per step: {web['timings']}")
    # Earlier modules fault the database; the load balancer takes each web droplet back
    # after its rise count of passing checks. Then every answer must be healthy.
    lb = site_serves_from_every_web_droplet(do, spec)
    seen = set()
    for _ in range(12):
        healthy, data = health(lb)
        assert healthy, data
        assert data["write"] == data["read"] == "ok"
        assert data["latency_ms"] < 3000
        seen.add(data["host"])
    assert seen == {n.name for n in spec.nodes_with("wordpress")}, "every web droplet serves"
    for path in ("/wp-config.php", "/.htaccess"):
        assert wp.http_get(f"http://{lb['ip']}{path}")[0] == 403
    hosts, remote = web_hosts(spec, "lab")
    config = (
        wp.DEBIAN_WP_CONFIG
        if wp.debian_package(spec)
        else wp.DESTINATIONS["wordpress/wp-config.php.j2"][0]
    )
    try:
        with remote.connect(hosts[0]) as conn:
            perms = run(conn, f"stat -c '%a %U:%G' {config}").stdout.strip()
    finally:
        remote.close()
    assert perms == "640 root:www-data"


@pytest.mark.parametrize("name", EXAMPLES)
def test_rerun_restarts_nothing_and_keeps_every_droplet_in(
    stacks: dict, name: str, do: pydo.Client, lab_blocks: str
) -> None:
    spec, _ = stack(stacks, name)
    lb = site_serves_from_every_web_droplet(do, spec)  # all in before the rerun starts
    hosts, remote = web_hosts(spec, lab_blocks)
    before = {h.name: started_at(remote, h) for h in hosts}
    remote.close()
    members: list[list[int]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            members.append(sorted(wp.lb_members(do, lb["id"])))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = wordpress(spec, lab_blocks)
    finally:
        stop.set()
        watcher.join()
    assert not result["changed"], result["steps"]
    assert all(result["steps"][h.name] == "unchanged" for h in hosts)
    assert {tuple(m) for m in members} == {tuple(sorted(h.droplet_id for h in hosts))}
    hosts, remote = web_hosts(spec, lab_blocks)
    try:
        assert {h.name: started_at(remote, h) for h in hosts} == before
    finally:
        remote.close()


@pytest.mark.parametrize("name", EXAMPLES)
def test_site_answers_with_a_web_droplet_powered_off(
    stacks: dict, name: str, do: pydo.Client, lab_blocks: str
) -> None:
    from lab import faults

    spec, _ = stack(stacks, name)
    lb = wp.load_balancer(do, spec)
    hosts, remote = web_hosts(spec, lab_blocks)
    remote.close()
    victim, survivor = hosts[0], hosts[1]
    faults.power_off(victim.droplet_id)
    t0 = time.monotonic()
    try:
        # The load balancer needs its unhealthy_threshold of failed checks to notice; then
        # every request must be answered, by the survivor.
        wait_for(
            "the load balancer to stop routing to the powered-off droplet",
            lambda: all(health(lb)[1].get("host") == survivor.name for _ in range(4)),
            timeout=60,
        )
        detected = time.monotonic() - t0
        for _ in range(20):
            healthy, data = health(lb)
            assert healthy and data["host"] == survivor.name, data
        print(f"{name}: LB stopped routing to {victim.name} {detected:.1f}s after power-off")
    finally:
        power_on(do, victim.droplet_id)
        wp.wait_lb_routes_to(lb, victim.name, timeout=180)
    result = wordpress(spec, lab_blocks)
    assert result["steps"][victim.name] == "unchanged", result["steps"]


@pytest.mark.parametrize("name", EXAMPLES)
def test_broken_droplet_stops_the_rollout_with_the_others_serving(
    stacks: dict, name: str, do: pydo.Client, lab_blocks: str
) -> None:
    spec, _ = stack(stacks, name)
    lb = wp.load_balancer(do, spec)
    hosts, remote = web_hosts(spec, lab_blocks)
    broken, others = hosts[0], hosts[1:]
    with remote.connect(broken) as conn:
        run(conn, f"systemctl mask --now {wp.PHP_FPM}")
    remote.close()
    try:
        with pytest.raises(Exception) as failed:
            wordpress(spec, lab_blocks)
        message = str(failed.value)
        assert broken.name in message and "masked" in message, message
        in_lb = wp.lb_members(do, lb["id"])
        assert broken.droplet_id not in in_lb
        assert all(h.droplet_id in in_lb for h in others)
        for _ in range(8):
            healthy, data = health(lb)
            assert healthy and data["host"] in {h.name for h in others}, data
    finally:
        hosts, remote = web_hosts(spec, lab_blocks)
        with remote.connect(broken) as conn:
            run(conn, f"systemctl unmask {wp.PHP_FPM}")
        remote.close()
    result = wordpress(spec, lab_blocks)
    assert result["steps"][broken.name].startswith("changed"), result["steps"]
    assert broken.droplet_id in wp.lb_members(do, lb["id"])


@pytest.mark.parametrize("name", EXAMPLES)
def test_health_recovers_after_switchover_without_touching_web(
    stacks: dict, name: str, do: pydo.Client, lab_blocks: str
) -> None:
    spec, _ = stack(stacks, name)
    lb = wp.load_balancer(do, spec)
    hosts, remote = rm.load(spec, lab_blocks)
    web = [h for h in hosts if "wordpress" in h.roles]
    before = {h.name: started_at(remote, h) for h in web}
    members = cluster_members(spec, lab_blocks)
    old = leader(members)
    # With synchronous replication Patroni switches over only to the synchronous standby.
    replicas = sorted(members, key=lambda m: (m.role != "sync_standby", m.name))
    candidate = next(m.name for m in replicas if not m.is_leader)
    samples: list[tuple[float, bool]] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            samples.append((time.monotonic(), health(lb)[0]))
            time.sleep(0.2)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    time.sleep(1)
    by_name = {h.name: h for h in hosts}
    t0 = time.monotonic()
    try:
        with remote.connect(by_name[old.name]) as conn:
            res = run(
                conn,
                f"{patroni.PATRONICTL} switchover {spec.name} --leader {old.name} "
                f"--candidate {candidate} --force",
                timeout=120,
            )
        assert "Successfully switched over" in res.stdout, res.stdout
        switched = time.monotonic()
        wait_for(
            "a healthy answer through the load balancer after the switchover",
            lambda: any(ok for t, ok in samples if t > switched),
            timeout=60,
            every=0.2,
        )
    finally:
        stop.set()
        poller.join()
    failures = [t for t, ok in samples if not ok and t >= t0]
    recovered = next(t for t, ok in samples if ok and t > switched)
    outage = (recovered - failures[0]) if failures else 0.0
    print(
        f"{name}: switchover {old.name} -> {candidate} took {switched - t0:.1f}s; health "
        f"endpoint failed for {outage:.1f}s ({len(failures)} failed polls), healthy again "
        f"{recovered - t0:.1f}s after the switchover began"
    )
    assert recovered - t0 < 30
    assert leader(cluster_members(spec, lab_blocks)).name == candidate
    try:
        assert {h.name: started_at(remote, h) for h in web} == before, "web droplets touched"
        db = [h for h in hosts if "postgres" in h.roles]
        with remote.connect(db[0]) as conn:
            patroni.wait_healthy(
                conn,
                [h.private_ip for h in db],
                [n.name for n in spec.nodes_with("postgres")],
                spec.synchronous_mode,
                timeout=180,
            )
    finally:
        remote.close()


def test_a_health_flood_from_one_client_is_limited_and_the_site_answers(
    stacks: dict, do: pydo.Client, lab_blocks: str
) -> None:
    """30 s of the health endpoint as fast as 8 threads can ask, from one client through
    the load balancer: nginx answers most of them 429 (each request that gets through
    writes a row, and none fails for another's write), the database's connections stay
    below max_connections, the requests that get through reuse php-fpm's persistent
    connections (few new sessions on the primary for hundreds of answers), and the front
    page keeps being served to the same client meanwhile."""
    spec, _ = stack(stacks, "compact")
    lb = wp.load_balancer(do, spec)
    url = wp.lb_health_url(lb)
    hosts, remote = rm.load(spec, lab_blocks)
    lead = leader(cluster_members(spec, lab_blocks)).name
    primary = next(h for h in hosts if h.name == lead)
    psql = "runuser -u postgres -- psql -XAtq -h /var/run/postgresql -c"
    codes: dict[int, int] = {}
    lock, stop = threading.Lock(), threading.Event()

    failed: list[str] = []  # what the endpoint said when it answered 503

    def flood() -> None:
        while not stop.is_set():
            code, _, body = wp.http_get(url, timeout=5)
            with lock:
                codes[code] = codes.get(code, 0) + 1
                if code == 503:
                    failed.append(body[:200])

    threads = [threading.Thread(target=flood, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    pages, connections = [], []
    host_header = {"Host": spec.wordpress.site_domain(spec.name)}
    try:
        with remote.connect(primary) as conn:
            limit = int(run(conn, f"{psql} 'SHOW max_connections'").stdout)
            sessions = f"{psql} 'SELECT sum(sessions) FROM pg_stat_database'"
            sessions_before = int(run(conn, sessions).stdout)
            end = time.monotonic() + 30
            while time.monotonic() < end:
                pages.append(wp.http_get(f"http://{lb['ip']}/", 5, host_header)[0])
                count = run(conn, f"{psql} 'SELECT count(*) FROM pg_stat_activity'").stdout
                connections.append(int(count))
                time.sleep(0.5)
            new_sessions = int(run(conn, sessions).stdout) - sessions_before
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        remote.close()
    print(
        f"flood: {codes}; front pages {pages.count(200)}/{len(pages)} answered 200; "
        f"connections max {max(connections)} of {limit}; {new_sessions} new sessions"
    )
    assert codes.get(429, 0) > codes.get(200, 0), codes  # limited, most of it
    assert max(connections) < limit, (connections, limit)
    # Concurrent checks on one droplet once overwrote each other's row between write and
    # read ("row not read back": a 503 the load balancer's own check could get too).
    assert not [b for b in failed if "not read back" in b], failed[:5]
    # A new connection per answer would be one session per 200 (and per front page):
    # persistent ones are reused. Our psql polls add one each (about 60).
    assert new_sessions < 0.5 * (codes.get(200, 0) + len(pages)), (new_sessions, codes)
    assert pages.count(200) >= 0.9 * len(pages), pages
    time.sleep(3)  # the client's burst refills (20 a second)
    healthy, data = health(lb)  # and the endpoint itself answers once the flood is over
    assert healthy, data
