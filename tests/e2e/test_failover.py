"""The failover drill against the local cloud, on the compact example: every fault with
0 acknowledged writes lost, one leader afterwards and the cluster healthy again; a
destructive fault without consent and an unhealthy cluster are refused before anything
is touched."""

from __future__ import annotations

import pytest

from flows.failover import failover_drill
from tasks import context as rm
from tasks.failover import DrillRefused
from tasks.hosts import run
from tests.e2e.conftest import cluster_members, healthy_cluster, leader, stack

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    "fault",
    ["switchover", "kill-postgres", "stop-patroni", "power-off", "partition", "etcd-partition"],
)
def test_every_fault_loses_no_acknowledged_write(stacks, lab_blocks, fault):
    spec, _ = stack(stacks, "compact")
    healthy_cluster(spec, lab_blocks, timeout=240)
    report = failover_drill(spec, lab_blocks, fault, fault != "switchover")
    print(f"{fault}: {report}")
    assert report["acked_writes_lost"] == 0
    assert report["writes_acked"] > 20 and report["write_gap_s"] is not None
    assert report["site_gap_s"] is not None, "no front page served after the fault"
    if fault != "kill-postgres":
        assert report["new_leader"] != report["old_leader"]
    # Back by itself (with or without pg_rewind), never rebuilt or left failed.
    assert report["old_primary"].startswith(("rejoined as a replica", "kept the leader")), report
    members = healthy_cluster(spec, lab_blocks)
    assert [m.name for m in members if m.is_leader] == [report["new_leader"]]


def test_a_destructive_fault_needs_consent(stacks, lab_blocks):
    spec, _ = stack(stacks, "compact")
    with pytest.raises(DrillRefused, match="--allow-destructive"):
        failover_drill(spec, lab_blocks, "power-off")


def test_an_unhealthy_cluster_is_refused(stacks, lab_blocks):
    """A replica's Patroni stopped: the drill says so and touches nothing."""
    spec, _ = stack(stacks, "compact")
    healthy_cluster(spec, lab_blocks, timeout=240)
    replica = next(m for m in cluster_members(spec, lab_blocks) if not m.is_leader)
    hosts, remote = rm.load(spec, lab_blocks)
    host = next(h for h in hosts if h.name == replica.name)
    before = leader(cluster_members(spec, lab_blocks)).name
    with remote.connect(host) as conn:
        run(conn, "systemctl stop patroni", timeout=120)
        try:
            with pytest.raises(DrillRefused, match=f"not healthy.*{replica.name}"):
                failover_drill(spec, lab_blocks)
        finally:
            run(conn, "systemctl start patroni", timeout=120)
    remote.close()
    assert leader(healthy_cluster(spec, lab_blocks, timeout=240)).name == before
