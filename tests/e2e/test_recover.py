"""The recovery runbooks against the local cloud (compact example): a switchover to a
named replica, verified; a replica's data directory rebuilt from the leader (a file left
in it is gone afterwards), verified; the leader refused for reinit."""

from __future__ import annotations

import pytest

from flows.recover import recover_reinit, recover_switchover
from tasks import context as rm
from tasks.hosts import run
from tasks.recover import RecoverError
from tests.e2e.conftest import cluster_members, healthy_cluster, leader, stack

pytestmark = pytest.mark.e2e
MARK = "/var/lib/postgresql/15/patroni/lifeboat-reinit-check"


def test_switchover_to_the_named_sync_standby_and_not_to_another_replica(stacks, lab_blocks):
    """Synchronous mode: only the synchronous standby holds every acknowledged commit, so
    another replica is refused before anything is touched."""
    spec, _ = stack(stacks, "compact")
    members = healthy_cluster(spec, lab_blocks, timeout=240)
    old = leader(members).name
    other = next(m.name for m in members if m.role == "replica")
    with pytest.raises(RecoverError, match="is not the synchronous standby"):
        recover_switchover(spec, lab_blocks, other)
    assert leader(cluster_members(spec, lab_blocks)).name == old
    target = next(m.name for m in members if m.role == "sync_standby")
    result = recover_switchover(spec, lab_blocks, target)
    assert (result["old_leader"], result["leader"]) == (old, target)
    assert leader(cluster_members(spec, lab_blocks)).name == target


def test_reinit_rebuilds_a_replica_and_refuses_the_leader(stacks, lab_blocks):
    spec, _ = stack(stacks, "compact")
    members = healthy_cluster(spec, lab_blocks, timeout=240)
    replica = next(m.name for m in members if not m.is_leader)
    hosts, remote = rm.load(spec, lab_blocks)
    host = next(h for h in hosts if h.name == replica)
    with remote.connect(host) as conn:
        run(conn, f"touch {MARK}")
    result = recover_reinit(spec, lab_blocks, replica)
    assert result["member"] == replica and replica in result["replicas"]
    with remote.connect(host) as conn:
        assert not run(conn, f"test -e {MARK}", warn=True).ok  # a new data directory
    remote.close()
    with pytest.raises(RecoverError, match="is the leader: switch over first"):
        recover_reinit(spec, lab_blocks, leader(cluster_members(spec, lab_blocks)).name)
