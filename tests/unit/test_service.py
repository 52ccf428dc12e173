"""The deployments table (deployments/prefect.yaml) as `lifeboat serve` reads it: every
runbook entry point of flows/service.py deployed once or more, placeholders filled in for
the stack, schedules, parameters naming the stored spec block, the event trigger."""

from __future__ import annotations

import inspect

from prefect.flows import Flow

from blocks.stack import StackSpec
from flows import service


def _spec(schedule: str = "30 2 * * *") -> StackSpec:
    data = StackSpec.from_yaml("examples/compact.yaml").model_dump()
    data["backup"]["schedule"] = schedule
    return StackSpec.model_validate(data)


def test_the_table_is_filled_in_for_the_stack():
    rows = {r["name"]: r for r in service.table(_spec(), "prod")}
    assert set(rows) == {
        f"compact-{n}"
        for n in (
            "backup",
            "backup-health",
            "status",
            "restore-drill",
            "switchover-drill",
            "failover-drill",
            "recover-switchover",
            "recover-reinit",
            "recover-replace",
            "after-failover",
            "up",
        )
    }
    for row in rows.values():
        assert row["parameters"]["stack"] == "compact"
        assert row["parameters"]["credentials"] == "prod"
        assert row["work_pool"] == {"name": "lifeboat", "work_queue_name": "stack-compact"}
        assert "stack:compact" in row["tags"]
        assert "{{" not in str({k: v for k, v in row.items() if k != "triggers"})
    assert rows["compact-backup"]["schedules"] == [{"cron": "30 2 * * *", "timezone": "UTC"}]
    (trigger,) = rows["compact-after-failover"]["triggers"]
    assert trigger["expect"] == ["lifeboat.patroni.role.primary"]
    assert trigger["match"] == {"lifeboat.stack": "compact"}
    # Filled in by the automation from the event, not by us.
    assert trigger["parameters"] == {"leader": "{{ event.resource['lifeboat.member'] }}"}


def test_every_entry_point_is_a_flow_and_every_flow_is_deployed():
    flows = {n for n, f in inspect.getmembers(service) if isinstance(f, Flow)}
    used = {r["entrypoint"].split(":")[1] for r in service.table(_spec(), "lab")}
    assert used == flows
    for row in service.table(_spec(), "lab"):
        assert row["entrypoint"].startswith("flows/service.py:")


def test_serve_builds_the_same_set_with_their_schedules():
    built = {d.name: d for d in service.deployments(_spec(), "lab")}
    assert set(built) == {r["name"] for r in service.table(_spec(), "lab")}
    assert built["compact-backup"].schedules[0].schedule.cron == "30 2 * * *"
    health = built["compact-backup-health"].schedules[0].schedule
    assert health.interval.total_seconds() == 300
    assert built["compact-recover-reinit"].schedules == []
    assert built["compact-recover-replace"].schedules == []
    assert built["compact-up"].parameters["stack"] == "compact"
    (trigger,) = built["compact-after-failover"].triggers
    assert trigger.expect == {"lifeboat.patroni.role.primary"}


def test_the_environment_is_put_back():
    import os

    os.environ.pop("LIFEBOAT_STACK", None)
    service.table(_spec(), "lab")
    assert "LIFEBOAT_STACK" not in os.environ
