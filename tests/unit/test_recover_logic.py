"""Which member a switchover promotes, and what it refuses before touching anything."""

from __future__ import annotations

import re

import pytest

from tasks.patroni import Member
from tasks.recover import RecoverError, pick_candidate, refuse_retire

MEMBERS = [
    Member("db-1", "leader", "running"),
    Member("db-2", "replica", "streaming", lag=0),
    Member("db-3", "sync_standby", "streaming", lag=0),
]


def test_the_sync_standby_unless_a_replica_is_named():
    assert pick_candidate(MEMBERS, None) == ("db-1", "db-3")
    assert pick_candidate(MEMBERS, "db-2") == ("db-1", "db-2")


@pytest.mark.parametrize(
    ("to", "why"),
    [
        ("db-1", "already the leader"),
        ("db-9", "not a running replica of the cluster; replicas: db-2, db-3"),
    ],
)
def test_a_bad_candidate_is_refused_naming_the_replicas(to: str, why: str):
    with pytest.raises(RecoverError, match=why):
        pick_candidate(MEMBERS, to)


def test_no_switchover_without_exactly_one_leader_or_any_replica():
    with pytest.raises(RecoverError, match="0 leaders"):
        pick_candidate(MEMBERS[1:], None)
    with pytest.raises(RecoverError, match="no running replica"):
        pick_candidate([MEMBERS[0], Member("db-2", "replica", "stopped")], None)


def test_in_synchronous_mode_only_the_sync_standby_may_take_over():
    assert pick_candidate(MEMBERS, "db-3", synchronous=True) == ("db-1", "db-3")
    with pytest.raises(RecoverError, match=r"not the synchronous standby \(db-3\)"):
        pick_candidate(MEMBERS, "db-2", synchronous=True)


PLANNED = {
    "db-1": ("etcd", "postgres"),
    "db-2": ("etcd", "postgres"),
    "web-1": ("haproxy", "wordpress"),
}


@pytest.mark.parametrize(
    ("member", "status", "members", "allow", "why"),
    [
        ("db-9", None, None, False, "not a droplet of the stack; its droplets: db-1, db-2, web-1"),
        ("db-1", "active", MEMBERS, True, "db-1 is the leader: switch over first"),
        ("db-1", "off", MEMBERS, False, "db-1 is the leader"),  # its key not yet expired
        ("db-2", "off", [Member("db-3", "replica", "streaming")], False, "no leader"),
        ("db-2", "active", MEMBERS, False, "db-2 is running .* pass --allow-destructive"),
        ("web-1", "active", None, False, "web-1 is running"),
    ],
)
def test_a_replacement_is_refused_before_anything_is_destroyed(member, status, members, allow, why):
    found = refuse_retire(PLANNED, member, status, members, allow)
    assert found is not None
    assert re.search(why, found), found


@pytest.mark.parametrize(
    ("member", "status", "members", "allow"),
    [
        ("db-2", "off", MEMBERS, False),
        ("db-2", None, MEMBERS, False),  # gone already
        ("db-2", "active", MEMBERS, True),
        ("web-1", "off", None, False),
    ],
)
def test_a_lost_or_consented_droplet_may_be_replaced(member, status, members, allow):
    assert refuse_retire(PLANNED, member, status, members, allow) is None
