"""patroni._wait_reloaded (moved from flows/cluster.py onto lifeboat.waiting): every member
must take the new dynamic configuration, and two Patroni loops must go by; members still
waiting at the bound are all reported together."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest

from blocks.stack import StackSpec
from tasks import patroni
from tasks.hosts import Host

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class FakeRemote:
    @contextmanager
    def connect(self, host: Host):  # noqa: ANN201
        yield host  # the "connection" says which member is asked


SPEC = StackSpec.from_yaml(EXAMPLES / "compact.yaml")  # loop_wait 10: settle 22 s, bound 60 s


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A fake clock: sleeping advances it, nothing really waits."""
    now = [1000.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    monkeypatch.setattr(patroni.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(patroni.time, "sleep", sleep)
    return now


HOSTS = [Host(f"db-{i}", i, f"198.18.0.{i}", f"10.20.0.{i}", ("postgres",)) for i in (1, 2)]


def test_waits_until_every_member_took_it(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: dict[str, int] = {}

    def states(conn: Host, wanted: dict, pending: bool) -> dict[str, str]:
        asked[conn.name] = asked.get(conn.name, 0) + 1
        late = conn.name == "db-1" and asked[conn.name] < 2  # db-1 takes it at its 2nd look
        return {p: ("waiting" if late else "applied") for p in wanted}

    monkeypatch.setattr(patroni, "member_info", lambda conn, ip: {"pending_restart": False})
    monkeypatch.setattr(patroni, "parameter_states", states)
    patroni._wait_reloaded(FakeRemote(), HOSTS, SPEC, {"work_mem": "8MB"})
    assert asked["db-1"] >= 2  # asked again until applied and two loops gone by
    assert asked["db-2"] == 1  # by then db-2 had it and the loops had gone by


def test_members_still_waiting_at_the_bound_are_reported_together(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(patroni, "member_info", lambda conn, ip: {"pending_restart": False})
    monkeypatch.setattr(
        patroni,
        "parameter_states",
        lambda conn, wanted, pending: {p: "waiting" for p in wanted},
    )
    with pytest.raises(patroni.PatroniError) as failed:
        patroni._wait_reloaded(FakeRemote(), HOSTS, SPEC, {"work_mem": "8MB"})
    message = str(failed.value)
    assert "db-1" in message and "db-2" in message and "work_mem" in message
