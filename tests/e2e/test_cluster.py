"""The cluster runbook against the local cloud, on examples/compact.yaml (5 droplets) under a
unique stack name: from nothing to a verified cluster, a rerun that restarts nothing, a
reload-only parameter change, and a restart-needing one applied replicas first; a changed
Patroni unit rolled out without restarting the leader in place.

The tests run in order on one stack (module fixture); each checks the result with its own
probes (SSH, curl, psql through HAProxy), not only what the flow reports."""

from __future__ import annotations

import json
import random
import time

import pydo
import pytest

from blocks.credentials import SSHIdentity
from blocks.secrets import cluster_secrets
from blocks.stack import StackSpec
from flows.cluster import cluster
from flows.provision import provision
from flows.status import stack_status
from lifeboat.waiting import NotYet
from tasks.droplets import destroy_stack, inventory
from tasks.hosts import Host, run
from tasks.probes import parse_show
from tests.e2e.conftest import ssh, wait_for
from tests.e2e.secrets_scan import leaks, readable_texts

pytestmark = pytest.mark.e2e


def spec_with(base: StackSpec, **parameters: object) -> StackSpec:
    data = base.model_dump()
    data["postgres"]["parameters"] = {**data["postgres"]["parameters"], **parameters}
    return StackSpec.model_validate(data)


@pytest.fixture(scope="module")
def stack(do: pydo.Client, lab: dict, lab_blocks: str):
    base = StackSpec.from_yaml("examples/compact.yaml").model_dump()
    # A unique name and VPC range: independent of other stacks in the shared lab.
    name = f"cl{random.randrange(16**4):04x}"
    base.update(name=name, vpc_cidr=f"10.{random.randrange(150, 250)}.0.0/20")
    spec = StackSpec.model_validate(base)
    destroy_stack(do, spec)
    try:
        provision(spec, lab_blocks)
        hosts = inventory(do, spec)
        yield {"spec": spec, "hosts": hosts, "timings": {}}
    finally:
        destroy_stack(do, spec)


def by_role(hosts: list[Host], role: str) -> list[Host]:
    return [h for h in hosts if role in h.roles]


def through_haproxy(lab: dict, host: Host, port: int, sql: str) -> str:
    """psql through HAProxy on `host`, with the password file the runbook placed there."""
    with ssh(lab, host.public_ip) as conn:
        res = run(
            conn,
            "PGPASSFILE=/root/.lifeboat-pgpass psql -XAt -h 127.0.0.1 "
            f"-p {port} -U lifeboat_routing "
            f"-d postgres -c '{sql}'",
            timeout=30,
        )
    return res.stdout.strip()


def patroni_cluster(lab: dict, host: Host) -> dict:
    with ssh(lab, host.public_ip) as conn:
        out = run(conn, f"curl -s --max-time 5 http://{host.private_ip}:8008/cluster", timeout=20)
    return json.loads(out.stdout)


def snapshot(lab: dict, hosts: list[Host]) -> dict:
    """What a restart would change: systemd's ActiveEnterTimestamp of etcd, patroni and
    haproxy, HAProxy's process ids (a reload replaces the workers), PostgreSQL start time."""
    units = {"etcd": "etcd", "postgres": "patroni", "haproxy": "haproxy"}
    snap = {}
    for host in hosts:
        names = [u for role, u in units.items() if role in host.roles]
        with ssh(lab, host.public_ip) as conn:
            out = run(conn, f"systemctl show -p Id -p ActiveEnterTimestamp {' '.join(names)}")
            entry: dict = {"since": parse_show(out.stdout)}
            if "haproxy" in host.roles:
                entry["haproxy_pids"] = run(conn, "pgrep -x haproxy | sort").stdout.split()
            if "postgres" in host.roles:
                patroni = run(conn, f"curl -s http://{host.private_ip}:8008/patroni").stdout
                entry["postmaster_start"] = json.loads(patroni)["postmaster_start_time"]
        assert all(entry["since"].values()), (host.name, entry)
        snap[host.name] = entry
    return snap


def test_from_nothing_to_a_verified_cluster(stack, lab, lab_blocks):
    spec, hosts = stack["spec"], stack["hosts"]
    t0 = time.monotonic()
    result = cluster(spec, lab_blocks)
    stack["timings"]["first run"] = time.monotonic() - t0
    print(f"\ncompact from nothing to verified: {stack['timings']['first run']:.1f} s")
    print(json.dumps(result["timings"]))

    assert result["changed"]
    assert result["steps"]["etcd"].startswith("changed: formed from")
    assert "bootstrapped on" in result["steps"]["patroni"]
    assert result["pending_restart"] == []

    # Our own checks, independent of the flow's verification.
    db, web = by_role(hosts, "postgres"), by_role(hosts, "haproxy")
    members = patroni_cluster(lab, db[0])["members"]
    leaders = [m for m in members if m["role"] == "leader"]
    assert len(leaders) == 1 and leaders[0]["name"] == db[0].name  # the first node bootstrapped
    replicas = [m for m in members if m["role"] != "leader"]
    assert {m["state"] for m in replicas} == {"streaming"} and len(replicas) == 2
    assert {m["timeline"] for m in members} == {leaders[0]["timeline"]}
    assert any(m["role"] == "sync_standby" for m in replicas)
    for host in web:
        assert through_haproxy(lab, host, 5000, "SELECT pg_is_in_recovery()") == "f"
        assert through_haproxy(lab, host, 5001, "SELECT pg_is_in_recovery()") == "t"
    with ssh(lab, db[1].public_ip) as conn:
        # Debian's default cluster is gone for good, and etcd is our three-member cluster.
        assert run(conn, "pg_lsclusters --no-header").stdout.strip() == ""
        eps = ",".join(f"http://{h.private_ip}:2379" for h in db)
        out = run(conn, f"ETCDCTL_API=3 etcdctl --endpoints={eps} member list -w json").stdout
        assert sorted(m["name"] for m in json.loads(out)["members"]) == [h.name for h in db]
        assert run(conn, "systemctl is-enabled patroni").stdout.strip() == "enabled"

    # Host keys pinned at first contact are in the SSH identity block.
    pins = SSHIdentity.load(lab_blocks).known_hosts
    assert all(h.pin_key in pins for h in hosts)
    # No generated password anywhere in what the run returns.
    text = json.dumps(result, default=str)
    assert not [name for name, pw in cluster_secrets(spec.name).items() if pw in text]


def test_from_a_haproxy_droplet_postgresql_admits_only_the_routing_role(stack, lab):
    """pg_hba by role and source: from a web (HAProxy) droplet, with the right passwords,
    the superuser, replication and rewind roles are refused by a database droplet's
    PostgreSQL, and the routing role only reaches database postgres. No superuser
    password is on the droplet."""
    from tasks.hosts import put

    spec, hosts = stack["spec"], stack["hosts"]
    db, web = by_role(hosts, "postgres")[0], by_role(hosts, "haproxy")[0]
    passwords = cluster_secrets(spec.name)
    users = {
        "postgres": passwords["postgres-superuser"],
        "replicator": passwords["postgres-replication"],
        "rewind": passwords["postgres-rewind"],
        "lifeboat_routing": passwords["postgres-routing"],
    }
    passfile = "/root/.e2e-pgpass"

    def login(user: str, database: str) -> str:
        res = run(
            conn,
            f"PGPASSFILE={passfile} PGCONNECT_TIMEOUT=5 psql -XAtq -h {db.private_ip} "
            f"-U {user} -d {database} -c 'SELECT 1'",
            warn=True,
            timeout=30,
        )
        return res.stdout.strip() if res.ok else res.stderr.strip()

    with ssh(lab, web.public_ip) as conn:
        text = run(conn, "cat /root/.lifeboat-pgpass").stdout
        assert passwords["postgres-superuser"] not in text
        lines = "".join(f"*:*:*:{user}:{pw}\n" for user, pw in users.items())
        put(conn, passfile, lines, "0600", "root:root")
        try:
            for user in ("postgres", "replicator", "rewind"):
                assert "no pg_hba.conf entry" in login(user, "postgres"), user
            assert "no pg_hba.conf entry" in login("lifeboat_routing", "template1")
            assert login("lifeboat_routing", "postgres") == "1"
        finally:
            run(conn, f"rm -f {passfile}")


def test_rerun_changes_and_restarts_nothing(stack, lab, lab_blocks):
    spec, hosts = stack["spec"], stack["hosts"]
    before = snapshot(lab, hosts)
    t0 = time.monotonic()
    result = cluster(spec, lab_blocks)
    stack["timings"]["rerun"] = time.monotonic() - t0
    print(f"\nrerun: {stack['timings']['rerun']:.1f} s")
    assert set(result["steps"].values()) == {"unchanged"}, result["steps"]
    assert not result["changed"]
    assert snapshot(lab, hosts) == before


def test_rerun_starts_what_was_stopped(stack, lab, lab_blocks):
    """A crashed or stopped member: the rerun starts it (and only it) and verifies."""
    spec, hosts = stack["spec"], stack["hosts"]
    db = by_role(hosts, "postgres")
    members = patroni_cluster(lab, db[0])["members"]
    replica_name = next(m["name"] for m in members if m["role"] != "leader")
    replica = next(h for h in db if h.name == replica_name)
    with ssh(lab, replica.public_ip) as conn:
        run(conn, "systemctl stop patroni etcd", timeout=120)
    result = cluster(spec, lab_blocks)
    assert result["steps"]["etcd"] == f"changed: started {replica.name}"
    assert result["steps"]["patroni"] == f"changed: started {replica.name}"
    assert result["steps"]["packages"] == "unchanged"
    states = {m["name"]: m["state"] for m in patroni_cluster(lab, db[0])["members"]}
    assert states[replica.name] == "streaming"


def test_reload_parameter_applied_without_restart(stack, lab, lab_blocks):
    spec, hosts = spec_with(stack["spec"], work_mem="8MB"), stack["hosts"]
    web = by_role(hosts, "haproxy")[0]
    assert through_haproxy(lab, web, 5000, "SHOW work_mem") == "4MB"
    before = snapshot(lab, hosts)
    result = cluster(spec, lab_blocks)
    assert result["steps"]["parameters"].startswith("changed: DCS postgresql.parameters.work_mem")
    assert result["pending_restart"] == []
    assert through_haproxy(lab, web, 5000, "SHOW work_mem") == "8MB"
    assert through_haproxy(lab, web, 5001, "SHOW work_mem") == "8MB"
    after = snapshot(lab, hosts)
    # patroni.yml's bootstrap section changed too: Patroni reloaded, nothing restarted.
    assert {n: e["postmaster_start"] for n, e in after.items() if "postmaster_start" in e} == {
        n: e["postmaster_start"] for n, e in before.items() if "postmaster_start" in e
    }
    assert after == before


def test_restart_parameter_reported_then_applied_replicas_first(stack, lab, lab_blocks):
    spec = spec_with(stack["spec"], work_mem="8MB", max_connections=150)
    hosts = stack["hosts"]
    db, web = by_role(hosts, "postgres"), by_role(hosts, "haproxy")[0]
    result = cluster(spec, lab_blocks)
    assert sorted(result["pending_restart"]) == [h.name for h in db]
    assert "PENDING RESTART" in result["steps"]["parameters"]
    assert through_haproxy(lab, web, 5000, "SHOW max_connections") == "100"

    members = patroni_cluster(lab, db[0])["members"]
    leader = next(m["name"] for m in members if m["role"] == "leader")
    starts = {n: e["postmaster_start"] for n, e in snapshot(lab, db).items()}
    result = cluster(spec, lab_blocks, restart=True)
    restarted = result["details"]["parameters"]["restarted"]
    assert sorted(restarted) == [h.name for h in db]
    assert restarted[-1] == leader  # replicas first, the old leader last...
    # ...and never in place: it handed its role over first.
    assert result["details"]["parameters"]["switched_over"].startswith(f"{leader} -> ")
    old_leader = leader
    members = patroni_cluster(lab, db[0])["members"]
    leader = next(m["name"] for m in members if m["role"] == "leader")
    assert leader != old_leader
    assert result["pending_restart"] == []
    after = {n: e["postmaster_start"] for n, e in snapshot(lab, db).items()}
    assert all(after[n] != starts[n] for n in starts)
    assert through_haproxy(lab, web, 5000, "SHOW max_connections") == "150"
    assert through_haproxy(lab, web, 5001, "SHOW max_connections") == "150"

    # And the status report agrees, once HAProxy has seen the restarted primary rise
    # again (its checks run every second) and Patroni's view has settled. This stack was
    # built by provision + cluster only: no backup yet, which status counts as a problem.
    no_backup = "backups: none in the catalog"

    def settled() -> dict:
        status = stack_status(spec, lab_blocks)
        ups = [
            [s for s, st in backends["primary"].items() if st == "UP"]
            for backends in status["haproxy"].values()
        ]
        others = [p for p in status["problems"] if p != no_backup]
        if others or any(up != [leader] for up in ups):
            raise NotYet(f"problems={others} UP={ups}")
        return status

    status = wait_for("status to report the restarted cluster healthy", settled, 90, every=2)
    assert status["problems"] == [no_backup] and not status["ok"], status
    assert status["etcd"]["ok"] and len(status["etcd"]["members"]) == 3
    roles = sorted(m["role"] for m in status["patroni"]["members"])
    assert roles == ["leader", "replica", "sync_standby"]
    for backends in status["haproxy"].values():
        assert [s for s, st in backends["primary"].items() if st == "UP"] == [leader]


def test_a_changed_patroni_unit_is_rolled_out_without_restarting_the_leader_in_place(
    stack, lab, lab_blocks
):
    """A unit that differs from Lifeboat's (edited by hand here, as an upgrade would
    change it) restarts Patroni on every member: replicas first, and the leader hands its
    role over (switchover) before its own restart, rather than failing over under it."""
    spec, db = stack["spec"], by_role(stack["hosts"], "postgres")
    for host in db:
        with ssh(lab, host.public_ip) as conn:
            run(conn, "echo '# edited by hand' >> /etc/systemd/system/patroni.service")
    leader = next(
        m["name"] for m in patroni_cluster(lab, db[0])["members"] if m["role"] == "leader"
    )
    before = snapshot(lab, db)

    result = cluster(spec, lab_blocks)

    report = result["details"]["patroni"]["report"]
    assert sorted(report["restarted"]) == [h.name for h in db]
    assert report["restarted"][-1] == leader, report
    assert report["switched_over"].startswith(f"{leader} -> "), report
    assert f"switched over {leader} -> " in result["steps"]["patroni"]
    after = snapshot(lab, db)
    assert all(after[n]["since"]["patroni"] != before[n]["since"]["patroni"] for n in before)
    members = patroni_cluster(lab, db[0])["members"]
    assert next(m["name"] for m in members if m["role"] == "leader") != leader
    assert {m["state"] for m in members if m["role"] != "leader"} == {"streaming"}
    with ssh(lab, db[0].public_ip) as conn:
        unit = run(conn, "cat /etc/systemd/system/patroni.service").stdout
    assert "edited by hand" not in unit


def test_no_secret_in_logs_artifacts_or_results(stack):
    """After every run above: no generated password in any log line or artifact."""
    texts = readable_texts()
    recorded = "\n".join(texts.values())
    assert "cluster runbook of stack" in recorded and "bootstrapped on" in recorded
    assert "streaming with zero lag" in recorded  # the markdown verification artifact
    assert leaks(cluster_secrets(stack["spec"].name), texts) == []


def test_destroy_refuses_unconfirmed_then_removes_the_stack_and_keeps_its_objects(
    stack, do, lab_blocks
):
    """Last in this module: its stack goes. Unconfirmed, nothing is touched; confirmed,
    nothing of the stack is left in the cloud and its objects in Spaces are all still
    there (the fixture's own clean-up then finds nothing)."""
    from blocks.credentials import SpacesCredentials
    from flows.destroy import DestroyRefused, destroy
    from tasks import layout
    from tasks.droplets import owned
    from tasks.spaces import list_keys, s3_client

    spec = stack["spec"]
    present = owned(do, spec)
    assert f"load balancer {spec.resource_name}" in present and len(present) > 3, present
    with pytest.raises(DestroyRefused, match=f"--confirm {spec.name}"):
        destroy(spec, lab_blocks, confirm=spec.name + "x")
    assert owned(do, spec) == present
    s3 = s3_client(SpacesCredentials.load(lab_blocks))
    before = list_keys(s3, spec.bucket, layout.stack_prefix(spec.name))

    result = destroy(spec, lab_blocks, confirm=spec.name)

    assert sorted(result["removed"]) == sorted(present), result
    assert owned(do, spec) == []
    # Kept: every object there before (archiving may have added a segment meanwhile).
    assert list_keys(s3, spec.bucket, layout.stack_prefix(spec.name)).items() >= before.items()
    assert result["kept in Spaces"].startswith(f"s3://{spec.bucket}/{spec.name}/: ")
