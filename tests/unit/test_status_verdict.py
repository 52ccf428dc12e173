"""`lifeboat status`'s verdict: every part counts, HAProxy and the backups included, and
each problem is named."""

from __future__ import annotations

import copy

import pytest

from flows.status import verdict

HEALTHY = {
    "missing_droplets": [],
    "droplets": [{"name": "s-db-1"}, {"name": "s-web-1"}],
    "etcd": {"ok": True, "problems": []},
    "patroni": {
        "ok": True,
        "members": [{"name": "s-db-1", "role": "leader"}, {"name": "s-db-2", "role": "replica"}],
        "problems": [],
    },
    "haproxy": {"s-web-1": {"primary": {"s-db-1": "UP", "s-db-2": "DOWN"}}},
    "backups": {"count": 2, "problems": []},
}


def _with(path: list[str], value: object) -> dict:
    status = copy.deepcopy(HEALTHY)
    where = status
    for key in path[:-1]:
        where = where[key]
    where[path[-1]] = value
    return status


def test_a_healthy_stack_has_no_problem():
    assert verdict(HEALTHY) == []


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (["missing_droplets"], ["s-db-3"], "droplets missing or off: s-db-3"),
        (["etcd"], {"ok": False, "problems": ["no leader"]}, "etcd: no leader"),
        (["haproxy", "s-web-1"], {"primary": {"s-db-2": "UP"}}, "routes to ['s-db-2']"),
        (["haproxy", "s-web-1"], {"error": "stats socket"}, "haproxy on s-web-1: stats socket"),
        (["backups"], {"count": 0, "problems": []}, "backups: none in the catalog"),
        (["backups"], {"count": 1, "problems": ["manifest x unreadable"]}, "manifest x"),
        (["backups"], {"error": "Spaces away"}, "backups: Spaces away"),
    ],
)
def test_each_part_counts_and_is_named(path: list[str], value: object, named: str):
    problems = verdict(_with(path, value))
    assert problems and any(named in p for p in problems), problems
