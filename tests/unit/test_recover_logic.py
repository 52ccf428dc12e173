"""Which member a switchover promotes, and what it refuses before touching anything."""

from __future__ import annotations

import pytest

from tasks.patroni import Member
from tasks.recover import RecoverError, pick_candidate

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
