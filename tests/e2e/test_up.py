"""`lifeboat up` for both example specs in the local cloud: from nothing to a verified
cluster; a rerun changes nothing; a partitioned primary loses no acknowledged write; no
secret shows up in anything the runs leave behind."""

from __future__ import annotations

import time

import pytest

from blocks.credentials import SpacesCredentials
from blocks.secrets import WORDPRESS_DB, stack_secret
from flows.status import stack_status
from flows.up import up
from lab import faults
from tasks import context as rm
from tasks import haproxy, patroni, sql, wal
from tasks.hosts import put, run
from tasks.spaces import s3_client
from tests.e2e.conftest import (
    EXAMPLES,
    cluster_members,
    healthy_cluster,
    leader,
    site_serves_from_every_web_droplet,
    stack,
)

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("name", EXAMPLES)
def test_from_nothing_to_a_verified_cluster(stacks, lab_blocks, name):
    spec, _ = stack(stacks, name)
    # Right after `up` (whose first backup switched WAL) Patroni's DCS positions may
    # still be a loop old: wait, bounded, for the cluster the runbook promised.
    members = healthy_cluster(spec, lab_blocks)
    expected = [n.name for n in spec.nodes_with("postgres")]
    assert patroni.assess_cluster(members, expected, spec.synchronous_mode) == []
    assert all(m.lag == 0 for m in members if not m.is_leader)
    # Every HAProxy routes :5000 to the primary and :5001 to a replica.
    hosts, remote = rm.load(spec, lab_blocks)
    for host in (h for h in hosts if "haproxy" in h.roles):
        with remote.connect(host) as conn:
            assert (
                haproxy.query(conn, spec, spec.haproxy.primary_port, "SELECT pg_is_in_recovery()")
                == "f"
            )
            assert (
                haproxy.query(conn, spec, spec.haproxy.replica_port, "SELECT pg_is_in_recovery()")
                == "t"
            )


@pytest.mark.parametrize("name", EXAMPLES)
def test_wal_is_archived_to_spaces(stacks, lab_blocks, name):
    """The runbook verified that a segment got archived (the first backup's retention may
    have deleted that one since: it predates the backup); a segment closed now lands in
    the bucket, compressed, with the SHA-256 of its original contents, and PostgreSQL's
    archiver reports no failure."""
    spec, result = stack(stacks, name)
    assert result["cluster"]["details"]["wal archived"]
    hosts, remote = rm.load(spec, lab_blocks)
    lead = leader(cluster_members(spec, lab_blocks))
    with remote.connect(next(h for h in hosts if h.name == lead.name)) as conn:
        segment = wal.verify_archiving(conn)
        failed = run(
            conn,
            "runuser -u postgres -- psql -XAt -h /var/run/postgresql "
            '-c "SELECT failed_count FROM pg_stat_archiver"',
        ).stdout.strip()
    s3 = s3_client(SpacesCredentials.load(lab_blocks))
    objects = s3.list_objects_v2(Bucket=spec.bucket, Prefix=f"{spec.name}/")["Contents"]
    keys = [o["Key"] for o in objects if o["Key"].endswith(f"/wal/{segment}.zst")]
    assert len(keys) == 1, [o["Key"] for o in objects]
    head = s3.head_object(Bucket=spec.bucket, Key=keys[0])
    assert len(head["Metadata"]["sha256"]) == 64
    assert head["ContentLength"] < 16 * 1024 * 1024 / 4  # compressed
    assert failed == "0"


@pytest.mark.parametrize("name", EXAMPLES)
def test_a_rerun_creates_nothing_and_restarts_nothing(stacks, lab_blocks, do, name):
    spec, _ = stack(stacks, name)
    ids_before = sorted(d["id"] for d in do.droplets.list(tag_name=spec.stack_tag)["droplets"])
    before = stack_status(spec, lab_blocks)
    result = up(spec, lab_blocks)
    after = stack_status(spec, lab_blocks)
    ids_after = sorted(d["id"] for d in do.droplets.list(tag_name=spec.stack_tag)["droplets"])
    assert ids_after == ids_before
    changed = {k: v for k, v in result["cluster"]["steps"].items() if v != "unchanged"}
    assert changed == {}, changed
    assert result["cluster"]["changed"] is False

    def started(status: dict) -> dict:
        """systemd's ActiveEnterTimestamp per unit and PostgreSQL's start time per droplet."""
        return {
            d["name"]: (d["services"], (d.get("postgres") or {}).get("postmaster_start_time"))
            for d in status["droplets"]
        }

    assert any(units for units, _ in started(before).values())
    assert started(after) == started(before)


WRITER = """
import sys, time, uuid, psycopg2
deadline = time.time() + float(sys.argv[1])
out = open("/root/acked.txt", "w")
conn = None
while time.time() < deadline:
    key = str(uuid.uuid4())
    try:
        if conn is None:
            conn = psycopg2.connect(host="127.0.0.1", port=int(sys.argv[2]), dbname=sys.argv[3],
                                    user=sys.argv[4], connect_timeout=2, keepalives_idle=2,
                                    keepalives_interval=1, keepalives_count=2)
            conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("INSERT INTO e2e_probe (k) VALUES (%s)", (key,))
        out.write(key + "\\n")
        out.flush()
    except Exception:
        try:
            conn.close()
        except Exception:
            pass
        conn = None
    time.sleep(0.05)
"""


def test_partitioned_primary_loses_no_acknowledged_write(stacks, lab_blocks, do):
    """Cut the primary's droplet off for 45 s while a client writes through HAProxy every
    50 ms with its own keys; heal it. One leader (not the old one), every replica streaming
    on its timeline, and every acknowledged write is on it."""
    spec, _ = stack(stacks, "compact")
    hosts, remote = rm.load(spec, lab_blocks)
    web = next(h for h in hosts if "haproxy" in h.roles)
    old = leader(cluster_members(spec, lab_blocks))
    # As WordPress writes: its role, through HAProxy (no other role may connect from here).
    wp, port = spec.wordpress, spec.haproxy.primary_port
    password = stack_secret(spec.name, WORDPRESS_DB)
    as_wp = sql.through_haproxy(port, wp.db_user, wp.db_name, "/root/.pgpass")
    with remote.connect(web) as conn:
        put(conn, "/root/.pgpass", f"127.0.0.1:{port}:*:{wp.db_user}:{password}\n", "0600")
        sql.query(conn, "CREATE TABLE IF NOT EXISTS e2e_probe (k uuid PRIMARY KEY)", as_wp)
        put(conn, "/root/writer.py", WRITER)
        run(
            conn,
            "rm -f /root/acked.txt; nohup python3 /root/writer.py 75 "
            f"{port} {wp.db_name} {wp.db_user} >/root/writer.log 2>&1 &",
        )
    time.sleep(10)
    faults.partition(old.name)
    try:
        time.sleep(45)
    finally:
        faults.heal(old.name)
    time.sleep(25)  # the writer runs on past the heal
    members = healthy_cluster(spec, lab_blocks, timeout=240)
    assert leader(members).name != old.name
    with remote.connect(web) as conn:
        acked = set(run(conn, "cat /root/acked.txt").stdout.split())
        stored = set(sql.query(conn, "SELECT k FROM e2e_probe", as_wp).split())
    assert len(acked) > 300  # the client kept writing before and after the failover
    assert acked - stored == set(), f"{len(acked - stored)} acknowledged writes lost"
    site_serves_from_every_web_droplet(do, spec)  # put back: the next modules use the site
