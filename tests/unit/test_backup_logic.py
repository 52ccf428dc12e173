"""Which member a backup is taken from."""

from __future__ import annotations

import pytest

from tasks.backup import MAX_SOURCE_LAG, BackupError, choose_source
from tasks.patroni import Member


def _m(name: str, role: str, state: str = "streaming", lag: int | None = 0, tl: int = 2):
    return Member(name=name, role=role, state=state, timeline=tl, lag=lag)


LEADER = _m("db-1", "leader", "running", None)


def test_an_async_replica_before_the_synchronous_standby():
    members = [LEADER, _m("db-2", "sync_standby"), _m("db-3", "replica", lag=4096)]
    assert choose_source(members)[0] == "db-3"


def test_the_synchronous_standby_when_it_is_the_only_healthy_replica():
    members = [
        LEADER,
        _m("db-2", "sync_standby"),
        _m("db-3", "replica", lag=MAX_SOURCE_LAG + 1),  # too far behind
        _m("db-4", "replica", tl=1),  # still on the old timeline
        _m("db-5", "replica", state="starting", lag=None),
    ]
    name, why = choose_source(members)
    assert name == "db-2" and "healthy replica" in why


def test_the_primary_only_when_no_replica_is_healthy_and_it_says_so():
    name, why = choose_source([LEADER, _m("db-2", "replica", state="stopped", lag=None)])
    assert name == "db-1" and "no healthy replica" in why and "primary" in why


def test_nothing_to_back_up_from():
    with pytest.raises(BackupError, match="no healthy replica and no running primary"):
        choose_source([_m("db-2", "replica", state="stopped", lag=None)])
